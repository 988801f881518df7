"""Text generation with a transformers model: the one implementation both methods and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from pydantic import Field, field_validator

from harness.config import StrictModel, renamed
from harness.template import STOP_STRINGS, cut_at_stop, format_prompt


class SamplingSettings(StrictModel):
    """Decoding settings. ``temperature: 0`` is greedy. ``ignore_eos`` makes every completion full length
    (fixed-length throughput benchmarks)."""

    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_strings: list[str] = Field(default_factory=lambda: list(STOP_STRINGS))
    ignore_eos: bool = False
    strip: bool = True  # trailing whitespace off the completion (see RolloutSettings.strip)
    seed: int = 0


class RolloutSettings(StrictModel):
    """How every completion of a run is generated, training rollouts and evaluations alike (evaluations greedy)."""

    max_new_tokens: int = Field(48, gt=0)
    stop_strings: list[str] = Field(default_factory=lambda: list(STOP_STRINGS))
    # training rollouts generate exactly max_new_tokens tokens, EOS and stop strings ignored, so every method
    # generates the same token counts (throughput benchmarks); evaluation decodes as usual
    fixed_length: bool = False
    # trailing whitespace is cut off every completion before it is scored; false: the text as the engine returned
    # it (the published runs; on the test models the strip moved scores by 0.28–2.56)
    strip: bool = True

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("an empty stop string would cut every completion to nothing")
        return v

    @property
    def training_stops(self) -> list[str]:
        return [] if self.fixed_length else list(self.stop_strings)

    def greedy(self) -> SamplingSettings:
        """An evaluation's decoding."""
        return SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=0.0, stop_strings=self.stop_strings,
                                strip=self.strip)


# where the rollout keys stood before this release
MOVED_TO_ROLLOUT = {"eval.max_new_tokens": "rollout.max_new_tokens", "eval.stop_strings": "rollout.stop_strings",
                    "fixed_length": "rollout.fixed_length"}


def move_rollout_keys(data: Any, where: str) -> Any:
    for old, new in MOVED_TO_ROLLOUT.items():
        data = renamed(data, old, new, where)
    return data


@dataclass
class Completion:
    text: str
    n_tokens: int


class Generator(Protocol):
    """Generates one completion per raw prompt (the template is applied inside), in order."""

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]: ...


class HFGenerator:
    """Batched ``model.generate`` with left padding, stop strings and the shared template."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        tokenizer.padding_side = "left"

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        import torch  # here, not at import: the settings and the protocol are imported where torch is not needed

        with torch.inference_mode():
            return self._generate(torch, prompts, sampling)

    def _generate(self, torch, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        out: list[Completion] = []
        device = next(self.model.parameters()).device
        greedy = sampling.temperature == 0.0
        gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
        was_training = self.model.training
        self.model.eval()
        for start in range(0, len(prompts), self.batch_size):
            texts = [format_prompt(p) for p in prompts[start : start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(device)
            # transformers' sampling draws from the global RNG: seed it from our own stream per batch
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                          pad_token_id=self.tokenizer.pad_token_id)
            if not greedy:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.ignore_eos:
                kwargs.update(min_new_tokens=sampling.max_new_tokens)
            elif sampling.stop_strings:
                kwargs.update(stop_strings=list(sampling.stop_strings), tokenizer=self.tokenizer)
            ids = self.model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            for row in new:
                n = int((row != self.tokenizer.pad_token_id).sum()) if not sampling.ignore_eos else len(row)
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                out.append(Completion(cut_at_stop(text, sampling.stop_strings, sampling.strip), n))
        self.model.train(was_training)
        return out


class VLLMGenerator:
    """Batched generation with a vLLM ``LLM``: the shared template, stop strings, per-prompt sampling seeds."""

    def __init__(self, llm):
        self.llm = llm

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings, loras: list | None = None,
                 period: int | None = None) -> list[Completion]:
        """``loras``: a LoRA request (or None) per prompt. ``period``: prompts per member in a population batch;
        sampling seeds repeat with it, so a member's completions are the ones it would get alone."""
        from vllm import SamplingParams

        period = period or len(prompts)
        params = [SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, stop=None if sampling.ignore_eos else list(sampling.stop_strings),
                                 ignore_eos=sampling.ignore_eos,
                                 seed=sampling.seed + i % period if sampling.temperature else None)
                  for i in range(len(prompts))]
        outs = self.llm.generate([format_prompt(p) for p in prompts], params, lora_request=loras, use_tqdm=False)
        return [Completion(cut_at_stop(o.outputs[0].text, sampling.stop_strings, sampling.strip),
                           len(o.outputs[0].token_ids))
                for o in outs]
