"""Prompt sets: the built-in offline set, PKU-SafeRLHF (file or hub) and any JSONL with a ``prompt`` field."""

from harness.data.prompts import PromptRecord, PromptSet, PromptSource, load_prompt_set

__all__ = ["PromptRecord", "PromptSet", "PromptSource", "load_prompt_set"]
