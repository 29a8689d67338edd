"""The ASGI app of `velo serve`: predictions, the batch API, the page, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from typing import Any

import numpy as np
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.serve import bodies
from dispatcher.serve.batcher import Batcher
from dispatcher.serve.batches import router as batches_router
from dispatcher.serve.drift import Drift, DriftCollector
from dispatcher.serve.drift import router as drift_router
from dispatcher.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from dispatcher.serve.served import Served
from velosiped import settings
from velosiped.connection import connect
from velosiped.errors import ConfigError, InputError, VeloError, redact
from velosiped.frames import classes_of, kept_columns

__all__ = ["CONFIG_ENV", "MODEL_HEADER", "ServeConfig", "create_app", "from_env"]

log = logging.getLogger(__name__)

CONFIG_ENV = settings.SERVE_CONFIG.env
MODEL_HEADER = "X-Velo-Model-Sha256"

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class ServeConfig:
    model: str
    model_sha256: str | None = None
    model_poll: float = 10.0
    max_rows: int = 100_000
    max_body: int = 64 << 20
    batch_rows: int = 1024
    batch_wait_ms: float = 0.0
    redis_url: str | None = None
    queue: str = "velo"
    reference_profile: str | None = None
    engine: str = "sklearn"


class TooLarge(Exception):
    """A body over ``--max-body`` or ``--max-rows``: answered 413."""


def from_env() -> FastAPI:
    """uvicorn's factory in each worker process: the app for the options `velo serve` was given."""
    return create_app(ServeConfig(**json.loads(settings.SERVE_CONFIG.get())))


def create_app(cfg: ServeConfig, served: Served | None = None) -> FastAPI:
    """The app; ``served``: its model, loaded already (else loaded at start-up)."""
    served = served or Served(cfg.model, cfg.model_sha256, cfg.model_poll, cfg.engine)
    metrics = Metrics()
    batcher = Batcher(cfg.batch_rows, cfg.batch_wait_ms / 1000, metrics.batch)
    token = settings.API_TOKEN.get()
    holder: dict[str, redis.Redis] = {}

    def conn() -> redis.Redis:
        if cfg.redis_url is None:
            raise HTTPException(503, "no Redis configured: start velo serve with --redis or REDIS_URL")
        if "r" not in holder:
            holder["r"] = connect(cfg.redis_url)
        return holder["r"]

    def authorize(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "this route wants Authorization: Bearer <VELO_API_TOKEN>")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if served.current is None:
            served.load()
        poller = asyncio.create_task(served.poll_forever()) if cfg.model_poll > 0 else None
        yield
        if poller is not None:
            poller.cancel()

    app = FastAPI(
        title="Velosiped",
        version=_version(),
        description="Online predictions on the batch's code path, and the batch API.",
        lifespan=lifespan,
    )
    app.include_router(batches_router(conn, cfg.queue, authorize))
    drift = Drift(conn, cfg.reference_profile)
    app.include_router(drift_router(drift))
    if cfg.redis_url is not None:
        metrics.add(DriftCollector(drift))
    app.mount("/static", StaticFiles(packages=[("dispatcher.serve", "page")]), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(InputError)
    async def unprocessable(request: Request, e: InputError) -> Response:
        return JSONResponse({"error": str(e)}, status_code=422)

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, e: TooLarge) -> Response:
        return JSONResponse({"error": str(e)}, status_code=413)

    @app.exception_handler(VeloError)
    async def refused(request: Request, e: VeloError) -> Response:  # a ConfigError: a source or model refused
        return JSONResponse({"error": redact(str(e))}, status_code=400 if isinstance(e, ConfigError) else 503)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, e: redis.RedisError) -> Response:
        return JSONResponse({"error": f"Redis unavailable ({type(e).__name__})"}, status_code=503)

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal error; see the server's log"}, status_code=500)

    @app.get("/info")
    def info() -> dict[str, Any]:
        """The model served: URI, version, SHA-256, features in order, classes."""
        current = served.current
        if current is None:
            raise HTTPException(503, "model not loaded yet")
        return {**current.info(), "velosiped": _version(), "model_error": served.error, "config": _public(cfg)}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        """Ready: the model is loaded and, when configured, Redis answers."""
        problems = [] if served.current is not None else ["model not loaded"]
        if cfg.redis_url is not None:
            try:
                conn().ping()
            except (redis.RedisError, VeloError) as e:
                problems.append(f"Redis unavailable ({type(e).__name__})")
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Rows in (JSON records, JSON columns or ``text/csv``), the batch output's columns out.

        ``?proba=1`` adds ``proba_<class>`` columns; ``?keep=id,...`` copies only these input
        columns (default: all, as the batch output)."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body:
            raise TooLarge(f"request: body of {length} bytes is over --max-body {cfg.max_body}")
        body = await _read_at_most(request, cfg.max_body)
        parsed = bodies.parse(body, request.headers.get("content-type", bodies.JSON))
        if parsed.rows > cfg.max_rows:
            raise TooLarge(f"request: {parsed.rows} rows is over --max-rows {cfg.max_rows}")
        current = served.current
        if current is None:
            raise HTTPException(503, "model not loaded yet")
        query = request.query_params
        keep = query.get("keep")
        kept = kept_columns(parsed.header, None if keep is None else [c for c in keep.split(",") if c], "request")
        classes = classes_of(current.model, query.get("proba", "0").lower() in ("1", "true", "yes"), "request")
        spec = current.spec(parsed.header, "request")
        x = parsed.features(spec)
        if parsed.rows:
            prediction, probabilities = await batcher.predict(current, spec, x, bool(classes))
        else:
            prediction, probabilities = np.empty(0), (np.empty((0, len(classes))) if classes else None)
        names = [*kept, "prediction", *(f"proba_{c}" for c in classes)]
        content, media = parsed.answer(kept, prediction, probabilities, names, request.headers.get("accept", ""))
        # Each process of `--workers N` polls the model on its own: the header says which version
        # answered, so a client can tell during the few seconds a new version rolls out.
        return Response(content, media_type=media, headers={MODEL_HEADER: current.sha256})

    @app.get("/metrics")
    def metrics_page() -> Response:
        """Prometheus metrics: request latency by route and status, rows predicted, batch sizes; with
        Redis, the drift gauges of recent finished batches (dispatcher.serve.drift)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((resources.files("dispatcher.serve") / "page" / "index.html").read_text("utf-8"))

    app.add_middleware(_Timed, metrics=metrics)
    return app


class _Timed:
    """Latency of every request by route template and status (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.metrics.latency.labels(path, str(status)).observe(time.perf_counter() - started)


async def _read_at_most(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes: a chunked body announces no
    length, and must not be read whole into memory first."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request: body over --max-body {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _public(cfg: ServeConfig) -> dict[str, Any]:
    shown = asdict(cfg)
    shown["redis_url"] = redact(cfg.redis_url) if cfg.redis_url else None
    return shown


def _version() -> str:
    try:
        return metadata.version("velosiped")
    except metadata.PackageNotFoundError:
        return "unknown"
