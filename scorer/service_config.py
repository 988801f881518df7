"""Scorer service configuration: which backend serves R and which serves C, and how the service listens."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from harness.config import StrictModel, load_config
from harness.errors import UserError
from harness.suites.judges import JudgeSpec, check_template
from harness.suites.suite import SuiteName


class BackendSpec(StrictModel):
    """``builtin``/``judge``: the rule-based stand-ins. ``beaver``: a PKU Beaver score model directory
    (LlamaForScore). ``hf-classifier``: an AutoModelForSequenceClassification directory (logit 0)."""

    kind: Literal["builtin", "judge", "beaver", "hf-classifier"] = "builtin"
    path: str | None = None
    max_length: int = Field(512, gt=8)
    device: str = "auto"  # auto: cuda if available
    # auto: on a GPU the checkpoint's own dtype (bf16 if it names none), fp32 on the CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # one forward pass holds at most this many tokens, padding included (rows × the longest row): the bound on
    # the scorer's activation memory. On an out-of-memory error the batch is halved and the budget with it.
    max_batch_tokens: int = Field(16_384, gt=0)
    # response: cut the text, keep the EOS the score is read at; end: cut text+EOS (the published scorer)
    truncate: Literal["response", "end"] = "response"
    # generated: the conversation as generated; published: the text the published runs' clients and scorer
    # service rebuilt from it (a completion that invents an "ASSISTANT:" turn is scored partly repeated)
    scorer_text: Literal["generated", "published"] = "generated"

    @model_validator(mode="before")
    @classmethod
    def _batch_size_is_gone(cls, data):
        if isinstance(data, dict) and "batch_size" in data:
            data = {k: v for k, v in data.items() if k != "batch_size"}
            warnings.warn("scorer backend batch_size is deprecated and ignored: batches are sized by tokens, "
                          "set max_batch_tokens (rows × longest row) instead", FutureWarning, stacklevel=2)
        return data

    @model_validator(mode="after")
    def _text_needs_a_model(self) -> "BackendSpec":
        if self.scorer_text == "published" and self.kind in ("builtin", "judge"):
            raise ValueError(f"scorer_text: published needs a score model (beaver, hf-classifier): the {self.kind} "
                             "rules read the prompt and the response, not a conversation text")
        return self


class ServedJudge(StrictModel):
    """A judge model the service loads beside its scorer models, for runs whose suite names it (``kind: http``,
    ``served: NAME``): ``suite`` says which question its verdicts answer."""

    suite: SuiteName
    judge: JudgeSpec

    @model_validator(mode="after")
    def _a_model(self) -> "ServedJudge":
        if self.judge.kind != "generative":
            raise ValueError("a served judge is a judge model (kind: generative, with template and model); the "
                             "rule-based judges run in the run's own process")
        try:
            check_template(self.judge, self.suite)
        except UserError as e:
            raise ValueError(str(e)) from None
        return self


class ScorerServiceConfig(StrictModel):
    reward: BackendSpec = Field(default_factory=BackendSpec)
    cost: BackendSpec = Field(default_factory=BackendSpec)
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: any free port (announced through the rendezvous file)
    token: str | None = None
    token_file: str | None = None
    insecure_no_token: bool = False  # allow a non-loopback bind without a token (on a trusted network only)
    max_items: int = Field(1024, gt=0)
    max_chars: int = Field(20_000, gt=0)
    max_body_bytes: int = Field(16 * 2**20, gt=0)
    max_batch: int = Field(32, gt=0)  # dynamic batcher: run when this many pairs are waiting ...
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)  # ... or when the oldest has waited this long
    # a connection that holds a socket without making progress is closed: request headers not complete this
    # long after their first byte, a body not received this long after its headers, no request for this long
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    body_timeout_s: float = Field(60.0, gt=0, le=3600)
    idle_timeout_s: float = Field(30.0, gt=0, le=3600)
    rendezvous: str | None = None
    # judge models served at POST /judge, by name (docs/safety.md)
    judges: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], ServedJudge] = Field(
        default_factory=dict, max_length=8)


def load_service_config(path: str | Path | None, overrides: list[str] | None = None) -> ScorerServiceConfig:
    return load_config(ScorerServiceConfig, path, overrides)
