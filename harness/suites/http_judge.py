"""A judge model served by ``esgrpo serve-scorer`` (its config's ``judges:``), reached over HTTP with the scorer
client's retries, deadline and reply checks: the judge loads once beside the scorer models, not in every run."""

from __future__ import annotations

from typing import Any, Sequence

from harness.errors import UserError
from harness.suites.judges import LABELS, JudgeSpec, parse_verdicts
from harness.suites.sets import SuitePrompt
from harness.suites.templates import Verdict


class HttpJudge:
    def __init__(self, spec: JudgeSpec, suite: str):
        from harness.scoring.client import HttpScorer

        assert spec.service is not None and spec.served is not None  # JudgeSpec checks both for kind http
        self.client, self.name, self.suite = HttpScorer(spec.service), spec.served, suite
        served = (self.client.wait_ready().get("judges") or {})
        if self.name not in served:
            raise UserError(f"scorer {self.client.base_url()} serves no judge named {self.name!r} (it serves "
                            f"{', '.join(served) or 'none'}): add it to the service config's judges")
        if served[self.name].get("suite") != suite:
            raise UserError(f"scorer {self.client.base_url()}: judge {self.name!r} is served for the "
                            f"{served[self.name].get('suite')} suite, not {suite}")
        self._info = {**served[self.name], "backend": "http-judge", "served": self.name}

    def judge(self, prompts: Sequence[SuitePrompt], responses: Sequence[str]) -> list[Verdict]:
        n, out = self.client.spec.max_batch, []
        for start in range(0, len(prompts), n):
            part, answers = prompts[start : start + n], list(responses[start : start + n])
            reply = self.client.post("/judge", {"judge": self.name, "prompts": [p.prompt for p in part],
                                                "responses": answers, "contexts": [p.context for p in part]})
            out += parse_verdicts(reply, len(part), LABELS[self.suite], f"scorer {self.client.base_url()}/judge")
        return out

    def info(self) -> dict[str, Any]:
        return dict(self._info)
