"""Prompts against the policy's context: a prompt, in the template, must leave room for the response."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

from harness.data.prompts import PromptRecord, PromptSet
from harness.errors import UserError
from harness.template import format_prompt

log = logging.getLogger(__name__)

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def policy_context(policy_path: Path) -> int | None:
    """The number of positions the policy's config.json declares (None where it names none)."""
    try:
        cfg = json.loads((Path(policy_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = {**cfg.get("text_config", {}), **cfg}
    found = [int(cfg[k]) for k in CONTEXT_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 0]
    return found[0] if found else None


def prompt_room(policy_path: Path, max_new_tokens: int, engine_limit: int | None = None) -> int | None:
    """Tokens a prompt may take: the policy's context (or the engine's, when smaller) less the response."""
    limits = [n for n in (policy_context(policy_path), engine_limit) if n]
    if not limits:
        return None
    room = min(limits) - max_new_tokens
    if room <= 0:
        raise UserError(f"rollout.max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the policy's "
                        f"context of {min(limits)} tokens ({policy_path})")
    return room


def templated_tokens(tok, prompt: str) -> int:
    """How many tokens ``prompt`` takes in the conversation template."""
    return len(tok(format_prompt(prompt), add_special_tokens=True)["input_ids"])


def keep_last(tok, text: str, start: int, fits: Callable[[str], bool]) -> str | None:
    """The longest end of ``text``, from ``start`` tokens down, for which ``fits`` holds (None: no end does)."""
    body = tok(text, add_special_tokens=False)["input_ids"]
    keep = min(start, len(body))
    while keep > 0:  # decoded text can tokenize longer than the ids it came from: shorten until it fits
        end = tok.decode(body[-keep:]).lstrip()
        if fits(end):
            return end
        keep -= 1
    return None


def fit_to_context(prompts: PromptSet, policy_path: Path, room: int | None, long_prompts: str) -> tuple[PromptSet, int]:
    """The prompt set with every prompt within ``room`` tokens in the template: a longer one is refused, naming
    its file and line, or (``truncate``) keeps its last tokens, as TRL cuts prompts. Returns the set and the
    number of prompts cut."""
    if room is None:
        return prompts, 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_path)
    frame = len(tok(format_prompt(""), add_special_tokens=True)["input_ids"])
    cut = 0

    def fit(r: PromptRecord) -> PromptRecord:
        nonlocal cut
        n = templated_tokens(tok, r.prompt)
        if n <= room:
            return r
        if long_prompts == "error":
            raise UserError(f"{r.source}:{r.line}: field 'prompt' is {n} tokens in the template; the policy's context "
                            f"leaves {room} beside rollout.max_new_tokens (set data.long_prompts: truncate to keep "
                            "each long prompt's last tokens)")
        text = keep_last(tok, r.prompt, room - frame, lambda t: templated_tokens(tok, t) <= room)
        if text is not None:
            cut += 1
            return replace(r, prompt=text)
        raise UserError(f"{r.source}:{r.line}: field 'prompt' cannot be cut to the {room} tokens the policy's context "
                        "leaves beside rollout.max_new_tokens")

    fitted = replace(prompts, train=tuple(map(fit, prompts.train)), eval=tuple(map(fit, prompts.eval)))
    if cut:
        log.warning("%d prompt(s) were longer than the policy's context allows (%d tokens beside the response); "
                    "kept their last tokens (data.long_prompts: truncate)", cut, room)
    return fitted, cut
