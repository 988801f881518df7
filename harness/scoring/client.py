"""HTTP client for ``esgrpo serve-scorer``; implements the ``Scorer`` protocol.

Retries connection errors, timeouts, 429 and 5xx with exponential backoff and jitter until one total
deadline that covers connecting, reading (a reply still trickling in is cut off) and the backoff's sleeps, then
raises ``ScorerUnavailable``. 4xx, a redirect, a bad URL, a reply over MAX_REPLY_BYTES decoded, and a 5xx the
service marks permanent (its models failed to load, or one pair alone does not fit in
its memory: 507, ``ScorerOutOfMemory``) fail at once. Every reply is checked:
one finite reward and cost per pair sent, or ``BadScorerReply``. It never invents, drops or pads a score.
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

from harness.errors import BadScorerReply, ScorerError, ScorerOutOfMemory, ScorerUnavailable, UserError
from harness.scoring.protocol import Scores, ScorerSpec, parse_scores

log = logging.getLogger(__name__)
TOKEN_ENV = "ESGRPO_SCORER_TOKEN"


def _permanent(response: httpx.Response) -> bool:
    """The service marks failures that no retry can mend (models that failed to load) with ``permanent``."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("permanent") is True


def reply_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:500]


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return False  # a malformed URL or request: retrying sends the same thing
    if isinstance(exc, (httpx.TransportError, _RendezvousMissing)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code == 429 or (code >= 500 and not _permanent(exc.response))
    return False


class _RendezvousMissing(Exception):
    pass


MAX_REPLY_BYTES = 16 << 20  # decoded: a reply of 1,024 pairs is ~50 kB; a gzip bomb is cut as it inflates
backoff = wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)


def read_capped(response: httpx.Response, url: str, deadline: float) -> httpx.Response:
    """A streamed reply, read whole as its decoded body: cut off (as a timeout: retried while the deadline
    allows) once the deadline passes, however slowly the bytes trickle in, and refused past MAX_REPLY_BYTES."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise BadScorerReply(f"scorer {url}: reply larger than {MAX_REPLY_BYTES >> 20} MiB (decoded); refused")
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout(f"reply still arriving at the deadline ({size} bytes so far)")
        chunks.append(chunk)
    # the body is decoded already: the copy must not decode it again
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=response.request)


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
    service resolve it the same way). A token that is set must be usable: an empty token file would silently
    turn authentication off, and a non-ASCII one cannot travel in an HTTP header."""
    source = "token"
    if token_file:
        source = token_file
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise UserError(f"{token_file}: token file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{token_file}: cannot read the token file ({e})") from None
        if not token:
            raise UserError(f"{token_file}: the token file is empty")
    elif token is None:
        token, source = os.environ.get(TOKEN_ENV), TOKEN_ENV
    if token is None:
        return None
    if not token.strip() or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise UserError(f"{source}: the scorer token must be printable ASCII without spaces")
    return token


def http_scorer_overrides(prefix: str = "", url: str | None = None, rendezvous: str | Path | None = None,
                          token_file: str | Path | None = None, deadline_s: float | None = None) -> list[str]:
    """Dotted ``KEY=VALUE`` overrides that point a run's scorer entry at a running service, merged into the
    entry rather than replacing it (the spec's ``max_batch``, ``concurrency``... stay as written)."""
    values: dict[str, Any] = {"kind": "http", "url": url, "rendezvous": None if rendezvous is None else str(rendezvous),
                              "token_file": None if token_file is None else str(token_file)}
    if deadline_s is not None:  # else the spec's own deadline stands
        values["deadline_s"] = deadline_s
    return [f"{prefix}scorer.{k}={json.dumps(v)}" for k, v in values.items()]


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
        """One request with retries until the deadline; records how long the scorer was unreachable. Returns
        the decoded JSON reply."""
        first_failure: float | None = None
        last_error = ""
        deadline = time.monotonic() + self.spec.deadline_s
        url = path

        def attempt() -> Any:
            nonlocal first_failure, last_error, url
            try:
                url = self.base_url() + path
                # never past the deadline, not even with a request in flight
                left = max(0.05, min(self.spec.request_timeout_s, deadline - time.monotonic()))
                with self._http.stream(method, url, json=body, timeout=left) as streamed:
                    r = read_capped(streamed, url, deadline)
                r.raise_for_status()
            except Exception as e:
                if _retryable(e):
                    if first_failure is None:
                        first_failure = time.time()
                        log.warning("waiting for scorer (%s); retrying until %.0fs deadline", e, self.spec.deadline_s)
                    last_error = str(e)
                raise
            try:
                return json.loads(r.content)
            except (ValueError, RecursionError):
                raise BadScorerReply(f"scorer {url}: {r.status_code} reply is not JSON: {r.content[:200]!r}") from None

        try:
            for att in Retrying(retry=retry_if_exception(_retryable), reraise=False,
                                stop=stop_after_delay(self.spec.deadline_s),
                                wait=lambda state: min(backoff(state), max(0.0, deadline - time.monotonic()))):
                with att:
                    out = attempt()
        except RetryError:
            raise ScorerUnavailable(f"scorer unreachable for {self.spec.deadline_s:.0f}s: {last_error}") from None
        except httpx.HTTPStatusError as e:
            detail = reply_detail(e.response)
            if e.response.is_redirect:
                raise UserError(f"scorer {url} answered {e.response.status_code}, a redirect to "
                                f"{e.response.headers.get('location', '(no location)')[:200]!r}: point the scorer's "
                                "url at the service itself") from None
            if e.response.status_code == 507:
                raise ScorerOutOfMemory(f"scorer {url} out of memory: {reply_detail(e.response)}") from None
            if e.response.status_code >= 500:
                raise ScorerError(f"scorer {url} failed ({e.response.status_code}): {detail}") from None
            raise UserError(f"scorer rejected the request ({e.response.status_code}): {detail}") from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as e:
            raise UserError(f"scorer {url}: {e}") from None
        if first_failure is not None:
            self.outages.append(Outage(first_failure, time.time() - first_failure, last_error))
            log.warning("scorer back after %.1fs", time.time() - first_failure)
        return out

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """``body`` to ``path`` under the retries, deadline and reply checks of scoring (a served judge's too)."""
        return self._call("POST", path, body)

    def _score_chunk(self, prompts: list[str], responses: list[str]) -> Scores:
        reply = self._call("POST", "/score_batch", {"prompts": prompts, "responses": responses})
        try:
            return parse_scores(reply, len(prompts))
        except ValueError as e:
            raise BadScorerReply(f"scorer {self.base_url()}/score_batch, request of {len(prompts)} pairs: {e}") from None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        n = self.spec.max_batch
        futures = [self._pool.submit(self._score_chunk, list(prompts[i : i + n]), list(responses[i : i + n]))
                   for i in range(0, len(prompts), n)]
        rewards: list[float] = []
        costs: list[float] = []
        for fut in futures:
            r, c = fut.result()
            rewards += r
            costs += c
        return Scores(rewards, costs)

    def wait_ready(self) -> dict[str, Any]:
        """Block until ``/health`` answers 200 (it answers 503 while models load; retried until the
        deadline like any 5xx); returns ``/info``."""
        self._call("GET", "/health")
        return self.info()

    def info(self) -> dict[str, Any]:
        if self._info is None:
            info = self._call("GET", "/info")
            if not isinstance(info, dict):
                raise BadScorerReply(f"scorer {self.base_url()}/info: expected a JSON object, got {info!r:.200}")
            self._info = info
        return dict(self._info, url=self.base_url())

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()
