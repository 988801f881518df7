"""A generative judge model (HarmBench's classifier, Llama Guard, WildGuard, a StrongREJECT or XSTest grader):
its input in the published format, greedy decoding, the text it answered. Parsing is the suite's
(harness/suites/templates.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from harness.errors import UserError
from harness.suites.judges import JudgeSpec
from harness.suites.sets import SuitePrompt
from harness.suites.templates import ANSWER_TOKENS, PARSERS, Verdict, render
from scorer.backends import files_digest

log = logging.getLogger("esgrpo.scorer")


class JudgeModel:
    def __init__(self, model: str, template: str, engine: str = "hf", device: str = "cpu", dtype: str = "bfloat16",
                 batch_size: int = 16, max_new_tokens: int = 16):
        import torch
        from transformers import AutoTokenizer

        self.path, self.template, self.engine = Path(model), template, engine
        if not (self.path / "config.json").is_file():
            raise UserError(f"{self.path}: not a model folder (no config.json); a generative judge needs a local "
                            "copy of the judge model (huggingface-cli download ... --local-dir)")
        self.batch_size, self.max_new_tokens, self.dtype = batch_size, max_new_tokens, dtype
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Llama Guard models carry their task prompt as the tokenizer's chat template: use it where it is there
        self.chat = template == "llama-guard" and bool(getattr(self.tokenizer, "chat_template", None))
        if engine == "vllm":
            from vllm import LLM, SamplingParams

            self.llm = LLM(model=str(self.path), dtype=dtype, enable_prefix_caching=False)
            self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        else:
            from transformers import AutoModelForCausalLM

            self.device = device
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype)).to(device).eval()

    def text(self, prompt: str, response: str, context: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{context}\n\n{prompt}" if context else prompt},
                 {"role": "assistant", "content": response}], tokenize=False)
        return render(self.template, prompt, response, context)

    def complete(self, items: Sequence[tuple[str, str, str]]) -> list[str]:
        texts = [self.text(*item) for item in items]
        if self.engine == "vllm":
            return [o.outputs[0].text for o in self.llm.generate(texts, self.sampling, use_tqdm=False)]
        import torch

        out: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                # the formats leave out the BOS (<s>): the tokenizer adds it, as the published code has it added
                enc = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=not self.chat).to(self.device)
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                out += self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def info(self) -> dict[str, Any]:
        return {"model": str(self.path), "files": files_digest(self.path), "engine": self.engine, "dtype": self.dtype,
                "chat_template": self.chat, "max_new_tokens": self.max_new_tokens}


class GenerativeJudge:
    """A suite's judge: the model's answer to each (prompt, response) in the format, parsed by the suite's reading."""

    def __init__(self, spec: JudgeSpec, suite: str):
        self.spec, self.parse = spec, PARSERS[suite][spec.template]
        self.model = JudgeModel(spec.model, spec.template, engine=spec.engine, device=spec.device, dtype=spec.dtype,
                                batch_size=spec.batch_size,
                                max_new_tokens=spec.max_new_tokens or ANSWER_TOKENS[spec.template])

    def judge(self, prompts: Sequence[SuitePrompt], responses: Sequence[str]) -> list[Verdict]:
        outputs = self.model.complete([(p.prompt, r, p.context) for p, r in zip(prompts, responses, strict=True)])
        return [self.parse(o) for o in outputs]

    def info(self) -> dict[str, Any]:
        return {"backend": "generative-judge", "template": self.spec.template, **self.model.info()}
