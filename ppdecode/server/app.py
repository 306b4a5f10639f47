"""The OpenAI-compatible HTTP server: ``create_app(engine, ServerConfig)`` builds a FastAPI app.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (each with
``stream: true`` as server-sent events ending in ``data: [DONE]``), ``GET /health``,
``GET /metrics`` (Prometheus) and ``GET /`` (the chat page). Everything the app needs lives on the
objects built here; nothing is global, so tests may run several apps in one process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ppdecode.engine import GenerationResult, Prompt
from ppdecode.server.metrics import ServerMetrics
from ppdecode.server.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Limits,
    ModelCard,
    ModelList,
    Reply,
    SamplingRequest,
    generation_config,
    now,
    ppd_step,
    sse,
    validation_error,
)
from ppdecode.server.scheduler import BatchEngine, Event, Failed, Output, QueueFull, Scheduler, Ticket

logger = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Limits and access of one server; the defaults suit a CPU and a small model on one machine."""

    api_key: str | None = None  # required as a bearer token on /v1/* when set
    max_queue: int = 32  # requests that may wait beyond the engine's batch (max_batch); more get a 503
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_tokens: int = 4096  # cap on max_tokens / max_completion_tokens (and the context length)
    default_max_tokens: int = 256  # when a request gives no max_tokens
    warmup: bool = True  # one tiny generation at startup, so the first request is not slower

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(
                f"max_queue must be >= 0 (0 = no waiting beyond the batch), got {self.max_queue}"
            )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) is above max_tokens ({self.max_tokens})"
            )
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key is empty; give a key or None for open access")


def error_response(error: APIError) -> JSONResponse:
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status in (429, 503):
        headers["Retry-After"] = "1"
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class RequestGuard:
    """Refuses a request before any route sees it: a missing or wrong API key on ``/v1/`` (401), a
    body over the cap (413, also for chunked bodies without a length, which are read up to the cap)."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                why = "a wrong API key" if given else "no API key"
                error = APIError(
                    401, f"the request has {why}; send 'Authorization: Bearer KEY'", code="invalid_api_key"
                )
                await error_response(error)(scope, receive, send)
                return
        too_large = APIError(
            413, f"the request body is over {self.max_body_bytes} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await error_response(too_large if length.isdigit() else APIError(400, "bad Content-Length"))(
                scope, receive, send
            )
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                await error_response(too_large)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        replayed = False

        async def replay() -> Message:
            # the body once, then the real channel (so disconnects are still seen)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Waiter:
    """Carries a request's events from the scheduler thread onto the handler's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the client left

    def put(self, event: Event) -> None:  # called from the scheduler thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class _ClientGone(Exception):
    pass


class _Service:
    """The route handlers, bound to one engine's scheduler."""

    def __init__(
        self,
        model_name: str,
        context_length: int,
        config: ServerConfig,
        scheduler: Scheduler,
        metrics: ServerMetrics,
    ) -> None:
        self.model_name = model_name
        self.context_length = context_length
        self.scheduler = scheduler
        self.metrics = metrics
        self.limits = Limits(
            max_tokens=min(config.max_tokens, context_length), default_max_tokens=config.default_max_tokens
        )
        self.page = (resources.files("ppdecode.server") / "static" / "index.html").read_text(encoding="utf-8")

    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    async def health(self) -> JSONResponse:
        # 503 until warmed up (requests sent meanwhile are queued, not refused) and if the loop died
        status = "ok" if self.scheduler.ready.is_set() else "starting"
        if not self.scheduler.alive:
            status = "error"
        body = {
            "status": status,
            "model": self.model_name,
            "running": self.scheduler.num_running,
            "waiting": self.scheduler.num_waiting,
        }
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def prometheus(self) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def models(self) -> ModelList:
        return ModelList(data=[self._card()])

    async def model(self, model: str) -> ModelCard:
        self._check_model(model)
        return self._card()

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._generate(request, body, body.prompt_text(), "cmpl")

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        messages: Prompt = [message.as_dict() for message in body.messages]
        return await self._generate(request, body, messages, "chatcmpl")

    # ---- shared by both generation routes -----------------------------------------------------
    def _card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=0, max_model_len=self.context_length)

    def _check_model(self, model: str | None) -> None:
        # compared as a string, never looked up as a file or directory
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def _generate(
        self, request: Request, body: SamplingRequest, prompt: Prompt, prefix: str
    ) -> Response:
        self._check_model(body.model)
        config = generation_config(body, self.limits)
        waiter = _Waiter()
        ticket = Ticket(f"{prefix}-{uuid.uuid4().hex}", prompt, config, waiter.put, pieces=body.stream)
        try:
            self.scheduler.submit(ticket)
        except QueueFull as err:
            raise APIError(503, f"{err}; retry later", "server_error", code="queue_full") from err
        reply = Reply(chat=config.chat, id=ticket.request_id, model=self.model_name, created=now())
        # Until a response starts, this handler watches the connection itself; once a stream has
        # started, Starlette does (and cancels the stream's generator when the client leaves).
        watcher = asyncio.create_task(self._watch(request, ticket, waiter))
        try:
            first = await self._next(waiter)  # admitted, or refused (prompt too long)
            if isinstance(first, Failed):
                raise first.error
            if body.stream:
                stream = self._stream(ticket, waiter, reply, body.include_usage)
                headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
            result = await self._collect(waiter)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's code for a closed client
        finally:
            watcher.cancel()
        return JSONResponse(reply.whole(result).model_dump())

    async def _watch(self, request: Request, ticket: Ticket, waiter: _Waiter) -> None:
        # The body has been read, so the next message on the channel is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.scheduler.cancel(ticket.request_id)
        waiter.queue.put_nowait(None)

    @staticmethod
    async def _next(waiter: _Waiter) -> Event:
        event = await waiter.queue.get()
        if event is None:
            raise _ClientGone()
        return event

    async def _collect(self, waiter: _Waiter) -> GenerationResult:
        while True:
            event = await self._next(waiter)
            if isinstance(event, Failed):
                raise event.error
            assert isinstance(event, Output), "only the first event is an admission"
            if event.output.finished:
                assert event.output.result is not None
                return event.output.result

    async def _stream(
        self, ticket: Ticket, waiter: _Waiter, reply: Reply, include_usage: bool
    ) -> AsyncIterator[bytes]:
        # A client that disconnects cancels this generator (Starlette watches the connection);
        # ``finally`` then frees the request's row at the next step.
        done = False
        try:
            opener = reply.first_chunk()
            if opener is not None:
                yield sse(opener)
            while not done:
                event = await waiter.queue.get()
                if event is None:  # the client left before the stream began (already cancelled)
                    done = True
                    return
                if isinstance(event, Failed):
                    done = True
                    yield sse(event.error.body())
                    break
                assert isinstance(event, Output), "only the first event is an admission"
                output = event.output
                if output.chunk.text or output.chunk.token_ids:
                    yield sse(reply.chunk(output.chunk.text, ppd_step(output.chunk, event.pieces)))
                if output.finished:
                    done = True
                    assert output.result is not None
                    yield sse(reply.last_chunk(output.result))
                    if include_usage:
                        yield sse(reply.usage_chunk(output.result))
            yield SSE_DONE
        finally:
            if not done:
                self.scheduler.cancel(ticket.request_id)


def create_app(engine: BatchEngine, config: ServerConfig | None = None) -> FastAPI:
    """The server for ``engine`` (which the app's scheduler thread owns from startup to shutdown)."""
    config = config or ServerConfig()
    base = engine.base
    metrics = ServerMetrics()
    max_prompt_tokens = min(config.max_prompt_tokens or base.context_length, base.context_length)
    scheduler = Scheduler(
        engine, metrics, engine.max_batch + config.max_queue, max_prompt_tokens, warmup=config.warmup
    )
    service = _Service(base.name, base.context_length, config, scheduler, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        logger.info("serving %s (batch %d, queue %d)", base.name, engine.max_batch, config.max_queue)
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="ppdecode", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.add_middleware(RequestGuard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(APIError(exc.status_code, message, code=code))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(APIError(500, "internal server error", "server_error"))

    app.get("/", include_in_schema=False)(service.index)
    app.get("/health")(service.health)
    app.get("/metrics")(service.prometheus)
    app.get("/v1/models")(service.models)
    app.get("/v1/models/{model:path}")(service.model)
    app.post("/v1/completions")(service.completions)
    app.post("/v1/chat/completions")(service.chat_completions)
    app.mount("/static", StaticFiles(packages=[("ppdecode.server", "static")]), name="static")
    return app
