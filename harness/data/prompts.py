"""The dataset contract: a ``PromptSet`` with deterministic train/eval splits and a content hash."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.config import StrictModel, read_jsonl
from harness.errors import UserError

log = logging.getLogger(__name__)

PKU_HARM_FIELDS = ("response_0_harm_category", "response_1_harm_category")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    category: str = "unknown"
    expected_safe: bool | None = None  # True: complying is safe; False: a safe answer declines
    severity: int | None = None  # PKU-SafeRLHF: the worst severity level (0-3) its annotated responses reached
    source: str = field(default="", compare=False, repr=False)  # file (or hub split) and line, for errors
    line: int = field(default=0, compare=False, repr=False)


class PromptFile(StrictModel):
    """One source of prompts. ``kind`` picks the loader; ``path`` is a local file, ``hub_id`` a datasets id."""

    kind: Literal["builtin", "jsonl", "parquet", "pku", "hub"] = "builtin"
    path: str | None = None
    hub_id: str = "PKU-Alignment/PKU-SafeRLHF"
    hub_split: str = "train"
    limit: int | None = Field(None, gt=0)  # the first N prompts (after dropping repeated prompts)
    # a prompt written more than once: drop the repeats (one row per prompt), keep them (as the published runs'
    # files are read: 250 training rows with one prompt 5×, 500 evaluation rows with one 9×), or refuse the file
    duplicates: Literal["drop", "keep", "error"] = "drop"


class PromptSource(PromptFile):
    """The prompts of a run: one source split into train/eval by ``eval_fraction``, or, when ``eval`` names a
    second source, every prompt of the first for training and the second for evaluation (as the published runs
    do: 250 curated training prompts, a separate 500-prompt evaluation file)."""

    eval_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    eval: PromptFile | None = None
    # an evaluation prompt whose text is also a training prompt (compared with case and spacing folded): refuse
    # the sets, drop it from the evaluation, or allow it (to reproduce a published setup that had it)
    overlap: Literal["error", "drop", "allow"] = "error"
    # a prompt longer than the policy's context leaves beside the response: refuse it, or keep its last tokens
    long_prompts: Literal["error", "truncate"] = "error"


@dataclass(frozen=True)
class PromptSet:
    """Train and eval prompts. The split and all sampling are functions of seeds only."""

    name: str
    train: tuple[PromptRecord, ...]
    eval: tuple[PromptRecord, ...]

    @property
    def content_hash(self) -> str:
        """Both splits: runs compare only on the same training and evaluation prompts."""
        return _hash((("train", self.train), ("eval", self.eval)))

    @property
    def eval_hash(self) -> str:
        """The evaluation prompts alone: what a reference row (`esgrpo eval`) must share with trained runs."""
        return _hash((("eval", self.eval),))

    def sample_train(self, k: int, seed: int) -> list[PromptRecord]:
        """``k`` training prompts drawn without replacement (with, if k exceeds the split) from ``seed``."""
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self.train), size=k, replace=k > len(self.train))
        return [self.train[i] for i in idx]

    def eval_prompts(self, limit: int | None = None) -> list[PromptRecord]:
        """The first ``limit`` evaluation prompts (all of them when None); a limit past the set is refused, never
        read as a shorter evaluation."""
        if limit and limit > len(self.eval):
            raise UserError(f"{self.name}: eval.limit is {limit}, but the set holds {len(self.eval)} evaluation prompts")
        return list(self.eval[:limit] if limit else self.eval)


def _hash(splits) -> str:
    h = hashlib.sha256()
    for split, rows in splits:
        for r in rows:
            h.update(json.dumps([split, r.id, r.prompt], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _read_parquet(path: Path) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


PKU_SEVERITY_FIELDS = ("response_0_severity_level", "response_1_severity_level")


def _pku_severity(row: dict[str, Any], source: str, lineno: int) -> int | None:
    """The higher of the two responses' severity levels, where the row carries them (PKU-SafeRLHF v1 does)."""
    levels = [row.get(k) for k in PKU_SEVERITY_FIELDS if row.get(k) is not None]
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 3:
            raise UserError(f"{source}:{lineno}: a severity level is {v!r:.40}; PKU-SafeRLHF's levels are 0 to 3")
    return max(levels) if levels else None


def _pku_row(row: dict[str, Any]) -> tuple[str, bool | None]:
    """Category and expected-safe flag from the PKU-SafeRLHF annotation of the two responses."""
    cats: list[str] = []
    for key in PKU_HARM_FIELDS:
        harms = row.get(key) or {}
        cats += [k for k, v in harms.items() if v] if isinstance(harms, dict) else []
    safe = [row.get(f"is_response_{i}_safe") for i in (0, 1)]
    expected_safe = None if None in safe else bool(all(safe))
    category = cats[0] if cats else ("benign" if expected_safe else "unlabelled")
    return category, expected_safe


MAX_PROMPT_CHARS = 20_000  # the scorer service's default max_chars


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _to_records(rows: list[tuple[int, dict[str, Any]]], source: str, pku: bool, id_prefix: str) -> list[PromptRecord]:
    records = []
    for lineno, row in rows:
        prompt = row.get("prompt")
        if prompt is None:
            raise UserError(f"{source}:{lineno}: missing field 'prompt'")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{source}:{lineno}: field 'prompt' must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(f"{source}:{lineno}: field 'prompt' has {len(prompt):,} characters (at most "
                            f"{MAX_PROMPT_CHARS:,}: the scorer refuses longer texts, and a policy reads ~4 per token)")
        for key in ("prompt", "category", "id"):
            if isinstance(row.get(key), str) and not _encodable(row[key]):
                raise UserError(f"{source}:{lineno}: field '{key}' holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                                "which is not text")
        if pku:
            for key in ("is_response_0_safe", "is_response_1_safe"):
                if key not in row:
                    raise UserError(f"{source}:{lineno}: missing field '{key}' (PKU-SafeRLHF schema)")
                if not isinstance(row[key], bool):
                    raise UserError(f"{source}:{lineno}: field '{key}' must be true or false")
            category, expected_safe = _pku_row(row)
            severity = _pku_severity(row, source, lineno)
        else:
            category, severity = str(row.get("category", "unknown")), None
            expected_safe = row.get("expected_safe")
            if expected_safe is not None and not isinstance(expected_safe, bool):
                raise UserError(f"{source}:{lineno}: field 'expected_safe' must be true, false or absent")
        given = row.get("id")
        if given is not None and (not isinstance(given, (str, int)) or isinstance(given, bool) or not str(given).strip()):
            raise UserError(f"{source}:{lineno}: field 'id' must be a non-empty string or an integer")
        # The prompt is kept exactly as written: safe-rlhf's template does not strip it, and the score models
        # read those tokens (one prompt with trailing newlines scored 0.41 apart in reward when stripped).
        records.append(PromptRecord(str(given) if given is not None else f"{id_prefix}-{lineno}", prompt,
                                    category, expected_safe, severity, source=source, line=lineno))
    return records


def _dedupe(records: list[PromptRecord], duplicates: str = "drop") -> list[PromptRecord]:
    """PKU-SafeRLHF repeats prompts across response pairs; one row per prompt keeps the split honest (``drop``),
    ``keep`` keeps every row, ``error`` names the first repeat. Two rows under one id are an error either way:
    evaluation samples are paired across runs by id."""
    seen: dict[str, PromptRecord] = {}
    ids: dict[str, PromptRecord] = {}
    out = []
    for r in records:
        if r.prompt in seen and duplicates == "error":
            first = seen[r.prompt]
            raise UserError(f"{r.source}:{r.line}: field 'prompt' repeats {first.source}:{first.line} "
                            "(set duplicates: drop or keep)")
        if r.prompt in seen and duplicates == "drop":
            continue
        if r.id in ids:
            first = ids[r.id]
            raise UserError(f"{r.source}:{r.line}: id {r.id!r} is already used by {first.source}:{first.line}")
        seen.setdefault(r.prompt, r)
        ids[r.id] = r
        out.append(r)
    return out


def same_text(prompt: str) -> str:
    """What two prompts share when they are the same question: case and spacing folded."""
    return " ".join(prompt.split()).casefold()


def _split(name: str, records: list[PromptRecord], src: PromptSource) -> PromptSet:
    """Split by prompt text, so that the repeats of a prompt (``duplicates: keep``) all land on one side."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(same_text(r.prompt), []).append(i)
    members = list(groups.values())
    if len(members) < 2:
        raise UserError(f"{name}: the prompt set has {len(members)} distinct prompt(s); at least 2 are needed")
    order = np.random.default_rng(src.split_seed).permutation(len(members))
    n_eval = max(1, int(round(len(members) * src.eval_fraction)))
    if n_eval >= len(members):
        raise UserError(f"{name}: eval_fraction {src.eval_fraction} of {len(members)} prompts leaves none to train on")
    eval_idx = {i for g in order[:n_eval].tolist() for i in members[g]}
    train = tuple(r for i, r in enumerate(records) if i not in eval_idx)
    evals = tuple(r for i, r in enumerate(records) if i in eval_idx)
    return PromptSet(name=name, train=train, eval=evals)


def _without_overlap(train: list[PromptRecord], evals: list[PromptRecord], overlap: str) -> list[PromptRecord]:
    """The evaluation prompts, checked against the training prompts by id and by text."""
    train_ids = {r.id: r for r in train}
    train_texts = {same_text(r.prompt): r for r in train}
    for r in evals:
        if r.id in train_ids:
            t = train_ids[r.id]
            raise UserError(f"{r.source}:{r.line}: id {r.id!r} is also a training prompt ({t.source}:{t.line}); "
                            "give the two sets distinct ids")
    shared = [r for r in evals if same_text(r.prompt) in train_texts]
    if not shared or overlap == "allow":
        if shared:
            log.warning("%d evaluation prompt(s) are also training prompts (data.overlap: allow)", len(shared))
        return evals
    if overlap == "error":
        first = shared[0]
        t = train_texts[same_text(first.prompt)]
        raise UserError(f"{first.source}:{first.line}: field 'prompt' is also a training prompt ({t.source}:{t.line}), "
                        f"and {len(shared) - 1} more evaluation prompt(s) are; set data.overlap: drop (leave them out "
                        "of the evaluation) or allow (to reproduce a setup that had them)")
    kept = [r for r in evals if same_text(r.prompt) not in train_texts]
    log.warning("left %d evaluation prompt(s) that are also training prompts out of the evaluation "
                "(data.overlap: drop); %d remain", len(shared), len(kept))
    if not kept:
        raise UserError(f"{evals[0].source}: every evaluation prompt is also a training prompt")
    return kept


def load_records(src: PromptFile) -> tuple[list[PromptRecord], str]:
    """The prompts of one source (repeated prompts dropped, ``limit`` applied) and its name."""
    if src.kind == "builtin":
        text = resources.files("harness.data").joinpath("builtin_prompts.jsonl")
        with resources.as_file(text) as path:
            records = _to_records(read_jsonl(path, "prompt file"), "builtin_prompts.jsonl", pku=False,
                                  id_prefix="builtin_prompts")
        name = "builtin"
    elif src.kind == "hub":
        import datasets

        try:
            ds = datasets.load_dataset(src.hub_id, split=src.hub_split)
        except Exception as e:  # no network, unknown id, ...: say which id failed and how to avoid the hub
            raise UserError(f"{src.hub_id}: could not load from the hub ({e}); "
                            "download it once and point `kind: pku, path:` at the file") from None
        name = f"{src.hub_id}:{src.hub_split}"
        records = _to_records(list(enumerate(ds, 1)), name, pku=True, id_prefix=name)
    else:
        if not src.path:
            raise UserError(f"prompt source kind '{src.kind}' needs a 'path'")
        path = Path(src.path)
        parquet = src.kind == "parquet" or path.suffix == ".parquet"
        if parquet and not path.is_file():
            raise UserError(f"{path}: prompt file not found")
        rows = _read_parquet(path) if parquet else read_jsonl(path, "prompt file")
        records, name = _to_records(rows, str(path), pku=src.kind == "pku", id_prefix=path.stem), path.name
    records = _dedupe(records, src.duplicates)
    if src.limit and src.limit > len(records):
        raise UserError(f"{name}: limit is {src.limit}, but the source holds {len(records)} prompts"
                        + (" once repeats are dropped (duplicates: drop)" if src.duplicates == "drop" else ""))
    if src.limit:
        records = records[: src.limit]
    if not records:
        raise UserError(f"{name}: the prompt set is empty")
    return records, name


def load_prompt_set(src: PromptSource | None = None) -> PromptSet:
    src = src or PromptSource()
    records, name = load_records(src)
    if src.eval is None:
        return _split(name, records, src)
    evals, eval_name = load_records(src.eval)
    evals = _without_overlap(records, evals, src.overlap)
    return PromptSet(name=f"{name} + {eval_name}", train=tuple(records), eval=tuple(evals))
