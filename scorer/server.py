"""The scorer HTTP service (FastAPI + uvicorn).

GET /health (503 until the models are loaded), GET /info, POST /score_batch {"prompts", "responses"} →
{"rewards", "costs"}, POST /score_texts {"texts"} (full conversations in the template) → same shape.
Binds 127.0.0.1 by default; any other address needs a bearer token unless explicitly disabled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from harness.errors import UserError
from harness.records import atomic_write_text
from harness.scoring.client import resolve_token
from harness.template import split_conversation
from scorer.backends import build_scorer
from scorer.batcher import DynamicBatcher
from scorer.service_config import ScorerServiceConfig, load_service_config

log = logging.getLogger("esgrpo.scorer")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ScoreBatchRequest(BaseModel):
    prompts: list[str]
    responses: list[str]


class ScoreTextsRequest(BaseModel):
    texts: list[str]


class ScoreResponse(BaseModel):
    rewards: list[float]
    costs: list[float]


def check_security(cfg: ScorerServiceConfig) -> str | None:
    token = resolve_token(cfg.token, cfg.token_file)
    if cfg.host not in LOOPBACK and not token and not cfg.insecure_no_token:
        raise UserError(f"binding {cfg.host} exposes the scorer to the network: set a token (ESGRPO_SCORER_TOKEN, "
                        "token or token_file) or set insecure_no_token: true on a trusted network")
    return token


def validate_items(cfg: ScorerServiceConfig, **fields: list[str]) -> None:
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) > 1:
        raise HTTPException(422, f"lists differ in length: {lengths}")
    for name, values in fields.items():
        if not values:
            raise HTTPException(422, f"'{name}' is empty")
        if len(values) > cfg.max_items:
            raise HTTPException(422, f"'{name}' has {len(values)} items; at most {cfg.max_items} per request")
        for i, v in enumerate(values):
            if not v.strip() and name != "responses":
                raise HTTPException(422, f"{name}[{i}] is an empty string")
            if len(v) > cfg.max_chars:
                raise HTTPException(422, f"{name}[{i}] has {len(v)} characters; at most {cfg.max_chars}")


def create_app(cfg: ScorerServiceConfig, on_ready=None, on_shutdown=None) -> FastAPI:
    token = check_security(cfg)
    state: dict[str, Any] = {"ready": False, "error": None, "scorer": None, "batcher": None}

    def load() -> None:
        try:
            t = time.perf_counter()
            state["scorer"] = build_scorer(cfg)
            state["load_seconds"] = round(time.perf_counter() - t, 2)
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

    @app.middleware("http")
    async def guard(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and int(size) > cfg.max_body_bytes:
            return JSONResponse({"detail": f"request body over {cfg.max_body_bytes} bytes"}, status_code=413)
        if token and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given, f"Bearer {token}"):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    def ready_scorer():
        if state["error"]:
            raise HTTPException(500, f"scorer failed to load: {state['error']}")
        if not state["ready"]:
            raise HTTPException(503, "scorer is loading")
        return state["scorer"]

    @app.get("/health")
    async def health():
        if state["error"]:
            return JSONResponse({"ready": False, "error": state["error"]}, status_code=500)
        return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    @app.get("/info")
    async def info():
        scorer = ready_scorer()
        b: DynamicBatcher = state["batcher"]
        return {**scorer.info(), "load_seconds": state.get("load_seconds"),
                "limits": {"max_items": cfg.max_items, "max_chars": cfg.max_chars, "max_batch": cfg.max_batch},
                "served": {"batches": b.batches, "pairs": b.pairs, "busy_seconds": round(b.busy_seconds, 3)}}

    async def scored(prompts: list[str], responses: list[str]) -> ScoreResponse:
        ready_scorer()
        try:
            s = await state["batcher"].submit(prompts, responses)
        except ValueError as e:  # non-finite scores and the like: an error, never passed on
            raise HTTPException(500, str(e)) from None
        return ScoreResponse(rewards=s.rewards, costs=s.costs)

    @app.post("/score_batch", response_model=ScoreResponse)
    async def score_batch(req: ScoreBatchRequest):
        validate_items(cfg, prompts=req.prompts, responses=req.responses)
        return await scored(req.prompts, req.responses)

    @app.post("/score_texts", response_model=ScoreResponse)
    async def score_texts(req: ScoreTextsRequest):
        validate_items(cfg, texts=req.texts)
        pairs = []
        for i, t in enumerate(req.texts):
            try:
                pairs.append(split_conversation(t))
            except ValueError as e:
                raise HTTPException(422, f"texts[{i}]: {e}") from None
        return await scored([p for p, _ in pairs], [r for _, r in pairs])

    return app


def advertised_url(host: str, port: int) -> str:
    name = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    return f"http://{'[' + name + ']' if ':' in name else name}:{port}"


def serve(config: str | Path | None = None, host: str | None = None, port: int | None = None,
          rendezvous: str | Path | None = None) -> None:
    import uvicorn

    cfg = load_service_config(config)
    updates = {k: v for k, v in {"host": host, "port": port, "rendezvous": str(rendezvous) if rendezvous else None}.items()
               if v is not None}
    cfg = cfg.model_copy(update=updates)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        raise UserError(f"cannot bind {cfg.host}:{cfg.port} ({e.strerror})") from None
    bound = sock.getsockname()[1]
    url = advertised_url(cfg.host, bound)

    def announce() -> None:
        log.info("scorer serving at %s", url)
        if cfg.rendezvous:
            atomic_write_text(Path(cfg.rendezvous), json.dumps(
                {"url": url, "pid": os.getpid(), "host": socket.getfqdn(), "started": time.time()}))

    def withdraw() -> None:
        if cfg.rendezvous and Path(cfg.rendezvous).is_file():
            try:
                if json.loads(Path(cfg.rendezvous).read_text()).get("pid") == os.getpid():
                    Path(cfg.rendezvous).unlink()
            except (OSError, json.JSONDecodeError):
                pass

    app = create_app(cfg, on_ready=announce, on_shutdown=withdraw)
    print(f"esgrpo scorer listening on {url}", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=30)).run(sockets=[sock])
    finally:
        withdraw()
