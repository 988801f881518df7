"""A generative judge model (HarmBench's classifier, Llama Guard, WildGuard, a StrongREJECT or XSTest grader):
its input in the published format, greedy decoding, the text it answered. Parsing is the suite's
(harness/suites/templates.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from harness.data.context import policy_context
from harness.errors import UserError
from harness.suites.judges import JudgeSpec
from harness.suites.sets import SuitePrompt
from harness.suites.templates import ANSWER_TOKENS, PARSERS, Verdict, render
from scorer.backends import files_digest

log = logging.getLogger("esgrpo.scorer")
JUDGED_RESPONSE_TOKENS = 512  # HarmBench clips a generation to 512 classifier tokens before it classifies


class JudgeModel:
    def __init__(self, model: str, template: str, engine: str = "hf", device: str = "cpu", dtype: str = "bfloat16",
                 batch_size: int = 16, max_new_tokens: int = 16, max_model_len: int = 4096,
                 vllm_runtime_gib: float = 4.0, kv_cache_gib: float = 8.0):
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
        self.plan: str | None = None
        self.files = files_digest(self.path)  # once: /info and every record ask, and a 13B judge is 26 GB to hash
        # the judge's context, which its input and answer must fit in (a random stand-in may declare less than 4k)
        self.context = min(max_model_len, policy_context(self.path) or max_model_len)
        if engine == "vllm":
            self.llm = self._vllm(self.context, vllm_runtime_gib, kv_cache_gib)
            from vllm import SamplingParams

            self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        else:
            from transformers import AutoModelForCausalLM

            self.device = device
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype)).to(device).eval()

    def _vllm(self, max_model_len: int, runtime_gib: float, kv_cache_gib: float):
        """A vLLM engine with a small KV cache (``kv_cache_gib``, at least one sequence): it starts before the run's
        own engines, and the rest of the GPU is theirs."""
        import torch
        from vllm import LLM

        from harness.memory_plan import GIB, plan_engine, vllm_memory_kwargs
        from harness.vllm.process import prepare_vllm_process

        prepare_vllm_process(cpu_kv_cache_gib=1)
        memory = {}
        if torch.cuda.is_available():
            plan = plan_engine(self.path, self.dtype, max_model_len, self.batch_size, snapshot=False,
                               runtime_gib=runtime_gib)
            plan.check("the judge model's vLLM engine")
            self.plan = plan.describe()
            log.info("judge memory plan: %s", self.plan)
            memory = vllm_memory_kwargs(plan)
            kv = min(plan.kv_cache_gib, max(plan.kv_cache_min_gib, kv_cache_gib))
            memory["kv_cache_memory_bytes"] = int(kv * GIB)
        return LLM(model=str(self.path), dtype=self.dtype, max_model_len=max_model_len, enable_prefix_caching=False,
                   **memory)

    def text(self, prompt: str, response: str, context: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{context}\n\n{prompt}" if context else prompt},
                 {"role": "assistant", "content": response}], tokenize=False)
        return render(self.template, prompt, response, context)

    def clipped(self, response: str) -> str:
        """The response's first ``JUDGED_RESPONSE_TOKENS`` tokens (HarmBench's classifier reads no more)."""
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        return response if len(ids) <= JUDGED_RESPONSE_TOKENS else self.tokenizer.decode(ids[:JUDGED_RESPONSE_TOKENS])

    def complete(self, items: Sequence[tuple[str, str, str]]) -> list[str | None]:
        """The judge's answer to each (prompt, response, context); None where its input would not fit the judge's
        context with its answer (a prompt or context that long is not judged, and is counted as such)."""
        texts = [self.text(p, self.clipped(r), c) for p, r, c in items]
        room = self.context - self.max_new_tokens
        fits = [len(self.tokenizer(t, add_special_tokens=not self.chat)["input_ids"]) <= room for t in texts]
        todo = [t for t, ok in zip(texts, fits) if ok]
        answers = iter(self._generate(todo) if todo else [])
        return [next(answers) if ok else None for ok in fits]

    def _generate(self, texts: list[str]) -> list[str]:
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
        return {"model": str(self.path), "files": self.files, "engine": self.engine, "dtype": self.dtype,
                "chat_template": self.chat, "max_new_tokens": self.max_new_tokens, "context": self.context,
                "judged_response_tokens": JUDGED_RESPONSE_TOKENS}


class GenerativeJudge:
    """A suite's judge: the model's answer to each (prompt, response) in the format, parsed by the suite's reading."""

    def __init__(self, spec: JudgeSpec, suite: str):
        self.spec, self.parse = spec, PARSERS[suite][spec.template]
        self.model = JudgeModel(spec.model, spec.template, engine=spec.engine, device=spec.device, dtype=spec.dtype,
                                batch_size=spec.batch_size, max_model_len=spec.max_model_len,
                                max_new_tokens=spec.max_new_tokens or ANSWER_TOKENS[spec.template],
                                vllm_runtime_gib=spec.vllm_runtime_gib, kv_cache_gib=spec.kv_cache_gib)

    def judge(self, prompts: Sequence[SuitePrompt], responses: Sequence[str]) -> list[Verdict]:
        outputs = self.model.complete([(p.prompt, r, p.context) for p, r in zip(prompts, responses, strict=True)])
        return [self.parse(o) if o is not None else Verdict(None, None, f"not judged: longer than the judge's "
                                                                         f"{self.model.context}-token context")
                for o in outputs]

    def info(self) -> dict[str, Any]:
        return {"backend": "generative-judge", "template": self.spec.template, **self.model.info()}
