"""HTTP client for ``esgrpo serve-scorer``; implements the ``Scorer`` protocol.

Retries connection errors, timeouts, 429 and 5xx with exponential backoff and jitter until a total
deadline, then raises ``ScorerUnavailable``. 4xx fails at once. It never invents a score.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx
from tenacity import (RetryError, Retrying, retry_if_exception, stop_after_delay,
                      wait_exponential_jitter)

from harness.errors import ScorerUnavailable, UserError
from harness.scoring.protocol import Scores, ScorerSpec, check_finite

log = logging.getLogger(__name__)
TOKEN_ENV = "ESGRPO_SCORER_TOKEN"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, _RendezvousMissing)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


class _RendezvousMissing(Exception):
    pass


def read_rendezvous(path: str | Path) -> str:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        return str(data["url"])
    except FileNotFoundError:
        raise _RendezvousMissing(f"{p}: no scorer has announced itself yet") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        # A half-written file reads as "not yet"; the service writes it atomically, so this is transient.
        raise _RendezvousMissing(f"{p}: rendezvous file not readable yet") from None


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The shared scorer token: given inline, read from a file, or from $ESGRPO_SCORER_TOKEN (client and
    service resolve it the same way)."""
    if token:
        return token
    if token_file:
        return Path(token_file).read_text().strip()
    return os.environ.get(TOKEN_ENV)


@dataclass
class Outage:
    started: float
    seconds: float
    error: str


@dataclass
class HttpScorer:
    spec: ScorerSpec
    outages: list[Outage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.spec.url or self.spec.rendezvous):
            raise UserError("scorer kind 'http' needs 'url' or 'rendezvous'")
        token = resolve_token(self.spec.token, self.spec.token_file)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=self.spec.concurrency, max_keepalive_connections=self.spec.concurrency)
        self._http = httpx.Client(headers=headers, limits=limits, timeout=self.spec.request_timeout_s)
        self._pool = ThreadPoolExecutor(self.spec.concurrency, thread_name_prefix="scorer-client")
        self._info: dict[str, Any] | None = None

    def base_url(self) -> str:
        url = self.spec.url or read_rendezvous(self.spec.rendezvous)  # type: ignore[arg-type]
        return url.rstrip("/")

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        """One request with retries until the deadline; records how long the scorer was unreachable."""
        first_failure: float | None = None
        last_error = ""

        def attempt() -> Any:
            nonlocal first_failure, last_error
            try:
                r = self._http.request(method, self.base_url() + path, json=body)
                r.raise_for_status()
                return r.json()
            except Exception as e:
                if _retryable(e):
                    if first_failure is None:
                        first_failure = time.time()
                        log.warning("waiting for scorer (%s); retrying until %.0fs deadline", e, self.spec.deadline_s)
                    last_error = str(e)
                raise

        try:
            for att in Retrying(retry=retry_if_exception(_retryable), reraise=False,
                                stop=stop_after_delay(self.spec.deadline_s),
                                wait=wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)):
                with att:
                    out = attempt()
        except RetryError:
            raise ScorerUnavailable(f"scorer unreachable for {self.spec.deadline_s:.0f}s: {last_error}") from None
        except httpx.HTTPStatusError as e:
            raise UserError(f"scorer rejected the request ({e.response.status_code}): {e.response.text}") from None
        if first_failure is not None:
            self.outages.append(Outage(first_failure, time.time() - first_failure, last_error))
            log.warning("scorer back after %.1fs", time.time() - first_failure)
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = self.spec.max_batch
        chunks = [(list(prompts[i : i + n]), list(responses[i : i + n])) for i in range(0, len(prompts), n)]
        futures = [self._pool.submit(self._call, "POST", "/score_batch", {"prompts": p, "responses": r})
                   for p, r in chunks]
        rewards: list[float] = []
        costs: list[float] = []
        for fut in futures:
            out = fut.result()
            rewards += out["rewards"]
            costs += out["costs"]
        return check_finite(Scores(rewards, costs), "scorer response")

    def wait_ready(self) -> dict[str, Any]:
        """Block until ``/health`` answers 200 (it answers 503 while models load; retried until the
        deadline like any 5xx); returns ``/info``."""
        self._call("GET", "/health")
        return self.info()

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._call("GET", "/info")
        return dict(self._info, url=self.base_url())

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()
