"""The scorer HTTP service (FastAPI + uvicorn).

GET /health (503 until the models are loaded), GET /info, POST /score_batch {"prompts", "responses"} →
{"rewards", "costs"}, POST /score_texts {"texts"} (full conversations in the template) → same shape, POST /judge
{"judge", "prompts", "responses", "contexts"} → {"labels", "scores", "outputs"} from a served judge model.
Binds 127.0.0.1 by default; any other address needs a bearer token unless explicitly disabled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import secrets
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from harness.config import validate
from harness.errors import UserError, is_out_of_memory
from harness.suites.sets import SuitePrompt
from harness.records import atomic_write_text
from harness.scoring.client import resolve_token
from harness.template import split_conversation
from scorer.backends import PairTooLarge, ServiceScorer, build_scorer, first_line
from scorer.batcher import DynamicBatcher
from scorer.service_config import ScorerServiceConfig, load_service_config
from scorer.uvicorn_compat import header_timeout_protocol

log = logging.getLogger("esgrpo.scorer")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


MAX_ERRORS = 5  # a 422 names at most this many problems, and never echoes the input back


class ScoreResponse(BaseModel):
    rewards: list[float]
    costs: list[float]


class JudgeResponse(BaseModel):
    labels: list[str | None]  # None: the judge's output could not be read (counted by the suite, never guessed)
    scores: list[float | None]
    outputs: list[str | None]


class ErrorReply(BaseModel):
    """Every refusal: a short reason (4xx) or, for 5xx, what failed; ``permanent`` when no retry can mend it."""

    detail: str | list[str]
    permanent: bool = False


ERRORS = {code: {"model": ErrorReply, "description": what} for code, what in (
    (400, "a Content-Length that is not a number"), (401, "missing or wrong bearer token"), (408, "request body not received in time"),
    (413, "request body too large"),
    (422, f"invalid request: at most {MAX_ERRORS} problems, inputs never echoed"), (503, "models still loading"),
    (500, "models failed to load or scoring failed (permanent), or a score was not finite"),
    (507, "one pair alone does not fit in the scorer's memory (permanent)"))}


def request_models(cfg: ScorerServiceConfig) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """Request bodies with the service's limits in the schema: a list longer than ``max_items`` is refused
    before its items are validated (a million bad items cost 0.15 s instead of 4 s of the event loop), and
    unknown fields are errors."""
    strict = ConfigDict(extra="forbid")
    items = list[Annotated[str, Field(max_length=cfg.max_chars)]]
    field = (items, Field(..., max_length=cfg.max_items))
    batch = create_model("ScoreBatchRequest", __config__=strict, prompts=field, responses=field)
    texts = create_model("ScoreTextsRequest", __config__=strict, texts=field)
    judge = create_model("JudgeRequest", __config__=strict, judge=(str, Field(..., max_length=64)), prompts=field,
                         responses=field, contexts=(items | None, Field(None, max_length=cfg.max_items)))
    return batch, texts, judge


def short_errors(errors: list[dict[str, Any]]) -> list[str]:
    """At most MAX_ERRORS problems, each cut short: a field name is the client's input too (an unknown 15 MB key)."""
    out = [(f"{'.'.join(str(p)[:40] for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}")[:200]
           for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        out.append(f"... and {len(errors) - MAX_ERRORS} more")
    return out


class Gate:
    """The outermost layer, before anything reads the body: the bearer token (all but ``/health``), then the
    body, refused with 413 over ``max_bytes`` as the bytes arrive (a chunked body has no Content-Length to check
    up front) and with 408 when it is not all there ``body_timeout_s`` after the headers. The body is read
    here, then replayed to the app: the app would hold it whole anyway, and an error raised inside the app's own
    body read would come out as a 400."""

    def __init__(self, app, max_bytes: int, body_timeout_s: float, authorized):
        self.app, self.max_bytes, self.body_timeout_s, self.authorized = app, max_bytes, body_timeout_s, authorized

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"] != "/health" and not self.authorized(headers):
            return await JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        length = headers.get(b"content-length")
        if length is not None and not length.strip(b" \t").isdigit():
            return await JSONResponse({"detail": "Content-Length is not a number"}, status_code=400,
                                      headers={"Connection": "close"})(scope, receive, send)
        if length is not None and int(length) > self.max_bytes:
            return await too_large(scope, receive, send)
        messages, seen = [], 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except (asyncio.TimeoutError, ValueError):
                return await JSONResponse({"detail": f"request body not received within {self.body_timeout_s:g}s"},
                                          status_code=408, headers={"Connection": "close"})(scope, receive, send)
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


def check_security(cfg: ScorerServiceConfig) -> str | None:
    token = resolve_token(cfg.token, cfg.token_file)  # UserError for a missing/empty file or an unusable token
    if cfg.host not in LOOPBACK and not token and not cfg.insecure_no_token:
        raise UserError(f"binding {cfg.host} exposes the scorer to the network: set a token (ESGRPO_SCORER_TOKEN, "
                        "token or token_file) or set insecure_no_token: true on a trusted network")
    return token


def validate_items(**fields: list[str]) -> None:
    """What the request schema cannot say: equal lengths, no empty list, no blank prompt or text."""
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) > 1:
        raise HTTPException(422, f"lists differ in length: {lengths}")
    for name, values in fields.items():
        if not values:
            raise HTTPException(422, f"'{name}' is empty")
        for i, v in enumerate(values):
            if not v.strip() and name != "responses":
                raise HTTPException(422, f"{name}[{i}] is an empty string")


def build_judges(cfg: ScorerServiceConfig) -> dict[str, tuple[Any, threading.Lock]]:
    """The config's judge models, each with the lock that serializes its batches."""
    from scorer.judge_model import GenerativeJudge

    return {name: (GenerativeJudge(s.judge, s.suite), threading.Lock()) for name, s in cfg.judges.items()}


def create_app(cfg: ScorerServiceConfig, on_ready=None, on_shutdown=None,
               build: Callable[[ScorerServiceConfig], ServiceScorer] = build_scorer) -> FastAPI:
    token = check_security(cfg)
    state: dict[str, Any] = {"ready": False, "error": None, "scorer": None, "batcher": None, "judges": {}}

    def load() -> None:
        try:
            t = time.perf_counter()
            state["scorer"] = build(cfg)
            state["judges"] = build_judges(cfg)
            state["load_seconds"] = round(time.perf_counter() - t, 2)
            state["peak_host_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
            state["ready"] = True
            log.info("scorer ready in %.1fs", state["load_seconds"])
            if on_ready:
                on_ready()
        except Exception as e:
            state["error"] = str(e)
            log.error("scorer failed to load: %s", e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        threading.Thread(target=load, daemon=True, name="scorer-load").start()
        batcher = DynamicBatcher(lambda p, r: state["scorer"].score(p, r), cfg.max_batch, cfg.max_wait_ms)
        state["batcher"] = batcher
        task = loop.create_task(batcher.run())
        yield
        task.cancel()
        if on_shutdown:  # here, not after the server returns: uvicorn re-raises SIGTERM once shut down
            on_shutdown()

    app = FastAPI(title="esgrpo scorer", lifespan=lifespan)
    batch_model, texts_model, judge_model = request_models(cfg)
    expected = f"Bearer {token}".encode() if token else b""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": short_errors(list(exc.errors()))}, status_code=422)

    def authorized(headers: dict[bytes, bytes]) -> bool:
        # the raw header bytes are compared (non-ASCII headers are just wrong tokens)
        return not token or secrets.compare_digest(headers.get(b"authorization", b""), expected)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if state["error"] and request.url.path != "/health":  # after the token: failures are not told to strangers
            return load_failed()
        return await call_next(request)

    # outermost: the token and the body's size and time are checked before anything reads it
    app.add_middleware(Gate, max_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s, authorized=authorized)

    def load_failed() -> JSONResponse:
        # "permanent": no retry can mend it; clients stop at once instead of waiting for their deadline
        return JSONResponse({"detail": f"scorer failed to load: {state['error']}", "permanent": True}, status_code=500)

    def ready_scorer():
        if not state["ready"]:
            raise HTTPException(503, "scorer is loading")
        return state["scorer"]

    @app.get("/health")
    async def health(request: Request):
        if state["error"]:  # what failed (paths, a backend's message) only with the token
            told = {"error": state["error"]} if authorized(dict(request.scope["headers"])) else {}
            return JSONResponse({"ready": False, **told, "permanent": True}, status_code=500)
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/info")
    async def info():
        scorer = ready_scorer()
        b: DynamicBatcher = state["batcher"]
        return {**scorer.info(), "load_seconds": state.get("load_seconds"),
                "judges": {name: {"suite": cfg.judges[name].suite, **j.info()} for name, (j, _) in state["judges"].items()},
                "peak_host_rss_gib": state.get("peak_host_rss_gib"),
                "limits": {"max_items": cfg.max_items, "max_chars": cfg.max_chars, "max_batch": cfg.max_batch},
                "served": {"batches": b.batches, "pairs": b.pairs, "busy_seconds": round(b.busy_seconds, 3)}}

    async def scored(prompts: list[str], responses: list[str]) -> ScoreResponse:
        ready_scorer()
        try:
            s = await state["batcher"].submit(prompts, responses)
        except PairTooLarge as e:  # no retry can mend it: the client stops the run with this message
            log.error("%s", e)
            return JSONResponse({"detail": str(e), "permanent": True}, status_code=507)
        except ValueError as e:  # non-finite scores and the like: an error, never passed on
            raise HTTPException(500, str(e)) from None
        except Exception as e:  # the traceback stays in this log; the reply names what failed in one line. The
            # same pairs would fail the same way again: permanent, so the client stops instead of retrying to its deadline
            log.exception("scoring failed")
            return JSONResponse({"detail": f"scoring failed: {type(e).__name__}: {first_line(e)}", "permanent": True},
                                status_code=500)
        return ScoreResponse(rewards=s.rewards, costs=s.costs)

    async def score_batch(req):
        validate_items(prompts=req.prompts, responses=req.responses)
        return await scored(req.prompts, req.responses)

    async def score_texts(req):
        validate_items(texts=req.texts)
        pairs = []
        for i, t in enumerate(req.texts):
            try:
                pairs.append(split_conversation(t))
            except ValueError as e:
                raise HTTPException(422, f"texts[{i}]: {e}") from None
        prompts = [p for p, _ in pairs]
        validate_items(prompts=prompts)  # the same rule as /score_batch: no empty prompt
        return await scored(prompts, [r for _, r in pairs])

    async def judge(req):
        ready_scorer()
        validate_items(prompts=req.prompts, responses=req.responses)
        contexts = req.contexts if req.contexts is not None else [""] * len(req.prompts)
        if len(contexts) != len(req.prompts):
            raise HTTPException(422, f"'contexts' has {len(contexts)} items for {len(req.prompts)} prompts")
        served = state["judges"].get(req.judge)
        if served is None:
            raise HTTPException(422, f"no judge named {req.judge[:40]!r} here; this service serves "
                                     f"{', '.join(state['judges']) or 'none'}")
        model, lock = served
        items = [SuitePrompt(str(i), p, "", "", c) for i, (p, c) in enumerate(zip(req.prompts, contexts))]

        def run():
            with lock:  # one batch at a time on a judge model: its engine is not shared between threads
                return model.judge(items, req.responses)

        try:
            verdicts = await asyncio.to_thread(run)
        except Exception as e:
            log.exception("judging failed")
            code = 507 if is_out_of_memory(e) else 500
            return JSONResponse({"detail": f"judging failed: {type(e).__name__}: {first_line(e)}", "permanent": True},
                                status_code=code)
        return JudgeResponse(labels=[v.label for v in verdicts], scores=[v.score for v in verdicts],
                             outputs=[v.output for v in verdicts])

    # the body models are built from this config's limits: annotations set here, where they are real classes
    # (this module's annotations are strings, which FastAPI would take for query parameters)
    score_batch.__annotations__ = {"req": batch_model}
    score_texts.__annotations__ = {"req": texts_model}
    judge.__annotations__ = {"req": judge_model}
    app.post("/score_batch", response_model=ScoreResponse, responses=ERRORS)(score_batch)
    app.post("/score_texts", response_model=ScoreResponse, responses=ERRORS)(score_texts)
    app.post("/judge", response_model=JudgeResponse, responses=ERRORS)(judge)

    return app


def advertised_url(host: str, port: int) -> str:
    name = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    return f"http://{'[' + name + ']' if ':' in name else name}:{port}"


def check_rendezvous(path: Path) -> None:
    """Refuse a rendezvous path that would clobber a file that is not one, or that cannot be written: a scorer
    that cannot announce itself would serve nobody."""
    if path.exists():
        try:
            old = json.loads(path.read_text())
            ok = isinstance(old, dict) and {"url", "pid"} <= old.keys()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"{path}: exists and is not a scorer rendezvous file; refusing to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot write the rendezvous file there ({e.strerror})") from None


def serve(config: str | Path | None = None, host: str | None = None, port: int | None = None,
          rendezvous: str | Path | None = None) -> None:
    import uvicorn

    cfg = load_service_config(config)
    updates = {k: v for k, v in {"host": host, "port": port, "rendezvous": str(rendezvous) if rendezvous else None}.items()
               if v is not None}
    cfg = validate(ScorerServiceConfig, {**cfg.model_dump(), **updates}, f"{config or '<defaults>'} with command-line options")
    if cfg.rendezvous:
        check_rendezvous(Path(cfg.rendezvous))
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        raise UserError(f"cannot bind {cfg.host}:{cfg.port} ({e.strerror})") from None
    bound = sock.getsockname()[1]
    url = advertised_url(cfg.host, bound)
    server: uvicorn.Server | None = None
    failed: list[str] = []

    def announce() -> None:
        log.info("scorer serving at %s", url)
        if cfg.rendezvous:
            try:
                atomic_write_text(Path(cfg.rendezvous), json.dumps(
                    {"url": url, "pid": os.getpid(), "host": socket.getfqdn(), "started": time.time()}))
            except OSError as e:  # nobody can find this scorer: stop rather than serve no one
                failed.append(f"{cfg.rendezvous}: cannot write the rendezvous file ({e.strerror})")
                server.should_exit = True

    def withdraw() -> None:
        if cfg.rendezvous and Path(cfg.rendezvous).is_file():
            try:
                if json.loads(Path(cfg.rendezvous).read_text()).get("pid") == os.getpid():
                    Path(cfg.rendezvous).unlink()
            except (OSError, ValueError):
                pass

    app = create_app(cfg, on_ready=announce, on_shutdown=withdraw)
    print(f"esgrpo scorer listening on {url}", flush=True)
    # a bounded graceful shutdown: SIGTERM stops the server even with a request stuck in flight
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=cfg.idle_timeout_s,
                                           timeout_graceful_shutdown=10,
                                           http=header_timeout_protocol(cfg.header_timeout_s)))
    try:
        server.run(sockets=[sock])
    finally:
        withdraw()
    if failed:
        raise UserError(failed[0])
