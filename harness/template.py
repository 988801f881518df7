"""The conversation template shared by generation, scoring and evaluation.

The Beaver reward/cost models were trained on this exact template; generation stops at ``USER:``
because published ES/GRPO runs drifted into invented multi-turn dialogue without that stop.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
STOP_STRINGS: tuple[str, ...] = ("USER:",)
# a response that writes these goes on with a conversation nobody asked for: a sign of reward hacking
TURN_MARKERS: tuple[str, ...] = ("USER:", "ASSISTANT:", "BEGINNING OF CONVERSATION")


def invents_turns(response: str) -> bool:
    """The response writes a turn of the template itself (what the published runs drifted into without a stop)."""
    return any(m in response for m in TURN_MARKERS)


def format_prompt(prompt: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt exactly as given (safe-rlhf's template does not strip it)."""
    return template.format(prompt=prompt)


def format_conversation(prompt: str, response: str, template: str = PROMPT_TEMPLATE) -> str:
    """Full text as the score models read it (no space after ``ASSISTANT:``; the EOS is the tokenizer's)."""
    return format_prompt(prompt, template) + response


def cut_at_stop(text: str, stop_strings: tuple[str, ...] | list[str] = STOP_STRINGS, strip: bool = True) -> str:
    """Drop everything from the first stop string on (generation engines may overshoot by a few tokens), and
    trailing whitespace unless ``strip`` is off (the published runs scored the text as vLLM returned it)."""
    cut = len(text)
    for stop in stop_strings:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut].rstrip() if strip else text[:cut]


def split_conversation(text: str, template: str = PROMPT_TEMPLATE) -> tuple[str, str]:
    """Inverse of ``format_conversation`` for one-turn texts: (prompt, response)."""
    head, sep, tail = template.partition("{prompt}")
    if not text.startswith(head) or tail not in text[len(head):]:
        raise ValueError("text is not a conversation in the template "
                         f"{template!r} (it must start with {head!r} and contain {tail!r})")
    prompt, _, response = text[len(head):].partition(tail)
    return prompt, response


def published_scored_text(prompt: str, response: str) -> str:
    """The text the published ES and GRPO runs scored for (prompt, response), EOS left out: their clients cut the
    conversation into a user part (from the first ``USER:`` to the last ``ASSISTANT:``, stripped) and a response
    part (after the first ``ASSISTANT:``), and their scorer service put the two back into the template, or joined
    them as they were when the user part already looked like a conversation. A response that invents a turn is
    thereby scored with part of itself repeated inside the prompt."""
    text = format_conversation(prompt, response)
    if "USER:" in text and "ASSISTANT:" in text:
        user = text.split("USER:", 1)[1].rsplit("ASSISTANT:", 1)[0].strip()
        reply = text.split("ASSISTANT:", 1)[1]
    else:  # never for a text in the template; kept as the published client had it
        user, reply = text, ""
    if "BEGINNING OF CONVERSATION:" in user and "ASSISTANT:" in user:
        return user + reply
    return f"BEGINNING OF CONVERSATION: USER: {user} ASSISTANT:{reply}"
