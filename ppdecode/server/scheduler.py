"""The thread that owns the engine: continuous batching between HTTP handlers and ``Engine.step``.

The engine is not thread-safe, so exactly one thread touches it (tokenizer included). Handlers hand
it a ``Ticket`` through a queue; between two steps the thread admits new tickets (encode,
``add_request``), applies cancellations, runs one ``step()`` for every running row and passes each
row's output to its ticket's ``sink``, which forwards it to the handler's event loop. Requests join
the batch between steps and leave when they finish or are cancelled: continuous batching.

Admission is bounded: at most ``capacity`` tickets are in flight (running, waiting in the engine, or
not yet admitted); past that ``submit`` raises ``QueueFull`` at once instead of growing a backlog.
A failure in one request (a prompt that does not fit, an error while admitting it) fails that
request only; a failing step fails the rows that were in it and the loop goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ppdecode.config import GenerationConfig
from ppdecode.engine import Prompt, RequestOutput
from ppdecode.server.metrics import ServerMetrics
from ppdecode.server.protocol import APIError, token_pieces

logger = logging.getLogger(__name__)


class BatchEngine(Protocol):
    """What the scheduler uses of ``ppdecode.Engine`` (a test can pass a stand-in)."""

    base: Any  # LoadedModel: name, context_length
    tokenizer: Any
    max_batch: int  # rows decoded together; more requests wait in the engine

    def encode(self, prompt: Prompt, chat: bool = True) -> list[int]: ...
    def add_request(
        self, input_ids: list[int], config: GenerationConfig, request_id: str | None = None
    ) -> str: ...
    def step(self) -> list[RequestOutput]: ...
    def cancel(self, request_id: str) -> None: ...
    def has_unfinished(self) -> bool: ...
    @property
    def num_running(self) -> int: ...
    @property
    def num_waiting(self) -> int: ...


class QueueFull(Exception):
    pass


@dataclass
class Admitted:
    """The engine took the request (the prompt fits); outputs follow."""


@dataclass
class Output:
    output: RequestOutput
    pieces: list[str] | None  # per-token texts of output.chunk, for highlighting (see token_pieces)


@dataclass
class Failed:
    error: APIError


Event = Admitted | Output | Failed


@dataclass
class Ticket:
    """One request on its way through the scheduler; ``sink`` is called from the scheduler thread."""

    request_id: str
    prompt: Prompt
    config: GenerationConfig
    sink: Callable[[Event], None]
    pieces: bool = False  # compute per-token texts for each output (streaming clients)
    arrived: float = field(default_factory=time.perf_counter)
    first_token: float | None = None


@dataclass
class _Cancel:
    request_id: str


_STOP = object()


class Scheduler:
    def __init__(
        self,
        engine: BatchEngine,
        metrics: ServerMetrics,
        capacity: int,
        max_prompt_tokens: int,
        warmup: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.engine = engine
        self.metrics = metrics
        self.capacity = capacity
        self.max_prompt_tokens = max_prompt_tokens
        self.warmup = warmup
        self.ready = threading.Event()  # set once warmed up: requests are then served without delay
        self._inbox: queue.SimpleQueue[Ticket | _Cancel | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight = 0  # guarded by _lock: submitted and not yet finished or failed
        self._running: dict[str, Ticket] = {}  # scheduler thread only: admitted to the engine
        self._thread: threading.Thread | None = None
        # Snapshots for other threads (health checks), written by the scheduler thread after each step.
        self.num_running = 0
        self.num_waiting = 0

    # ---- any thread --------------------------------------------------------------------------
    def start(self) -> None:
        assert self._thread is None, "the scheduler is already started"
        self._thread = threading.Thread(target=self._run, name="ppd-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the scheduler thread did not stop within %.0f s", timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def submit(self, ticket: Ticket) -> None:
        with self._lock:
            if self._in_flight >= self.capacity:
                self.metrics.rejected.inc()
                raise QueueFull(
                    f"the server has {self._in_flight} requests in flight (at most {self.capacity})"
                )
            self._in_flight += 1
        self._inbox.put(ticket)

    def cancel(self, request_id: str) -> None:
        """Stop a request (its client went away); its row is freed at the next step."""
        self._inbox.put(_Cancel(request_id))

    # ---- the scheduler thread -------------------------------------------------------------------
    def _run(self) -> None:
        if self.warmup:
            self._warm_up()
        self.ready.set()
        pending: list[Ticket] = []  # tickets not yet admitted, cancellations already applied
        while True:
            # Block only when there is nothing to step; otherwise take what has arrived and step.
            block = not pending and not self.engine.has_unfinished()
            items = [self._inbox.get()] if block else []
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if _STOP in items:
                break
            for item in items:
                if isinstance(item, Ticket):
                    pending.append(item)
                elif isinstance(item, _Cancel):
                    self._cancel(item.request_id, pending)
            for ticket in pending:
                self._admit(ticket)
            pending.clear()
            if self.engine.has_unfinished():
                self._step()
            self.num_running, self.num_waiting = self.engine.num_running, self.engine.num_waiting
            self.metrics.running.set(self.num_running)
            self.metrics.waiting.set(self.num_waiting)
        for ticket in [*pending, *self._running.values()]:
            self._fail(ticket, APIError(503, "the server is shutting down", "server_error", code="shutdown"))
        self._running.clear()

    def _warm_up(self) -> None:
        """A tiny generation before the first request, which would otherwise pay for the cache's
        allocation and the first forwards (requests arriving meanwhile wait in the inbox)."""
        start = time.perf_counter()
        try:
            ids = self.engine.encode("Hello, world", chat=False)
            self.engine.add_request(ids, GenerationConfig(max_new_tokens=4, chat=False), "warm-up")
            while self.engine.has_unfinished():
                self.engine.step()
        except Exception:
            logger.exception("warm-up failed; serving anyway")
        logger.info("warm-up took %.1f s", time.perf_counter() - start)

    def _admit(self, ticket: Ticket) -> None:
        try:
            ids = self.engine.encode(ticket.prompt, chat=ticket.config.chat)
            if len(ids) > self.max_prompt_tokens:
                raise ValueError(
                    f"the prompt has {len(ids)} tokens; this server accepts at most {self.max_prompt_tokens}"
                )
            self.engine.add_request(ids, ticket.config, request_id=ticket.request_id)
        except ValueError as err:
            param = "messages" if ticket.config.chat else "prompt"
            self._fail(ticket, APIError(400, str(err), param=param))
            return
        except Exception:
            logger.exception("admitting request %s failed", ticket.request_id)
            self._fail(ticket, APIError(500, "the request could not be admitted", "server_error"))
            return
        self._running[ticket.request_id] = ticket
        self._send(ticket, Admitted())

    def _cancel(self, request_id: str, pending: list[Ticket]) -> None:
        for ticket in pending:
            if ticket.request_id == request_id:  # never reached the engine
                pending.remove(ticket)
                self._release()
                return
        if request_id in self._running:
            try:
                self.engine.cancel(request_id)
            except Exception:  # it may have finished in the step that just ran
                logger.debug("cancel of %s ignored", request_id, exc_info=True)

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception:
            # Which row broke is unknown: fail the rows of this step, free them, keep serving.
            logger.exception("engine step failed; failing its %d requests", len(self._running))
            for request_id, ticket in list(self._running.items()):
                self._fail(ticket, APIError(500, "decoding failed inside the engine", "server_error"))
                try:
                    self.engine.cancel(request_id)
                except Exception:
                    logger.debug("cancel of %s after a failed step ignored", request_id, exc_info=True)
            self._running.clear()
            time.sleep(0.1)  # an engine that keeps failing must not spin the loop
            return
        now = time.perf_counter()
        self.metrics.step_time.observe(now - start)
        for output in outputs:
            found = self._running.get(output.request_id)
            if found is None:  # failed earlier; its row is being freed
                continue
            ticket = found
            if ticket.first_token is None and output.chunk.token_ids:
                ticket.first_token = now
            pieces = token_pieces(self.engine.tokenizer, output.chunk) if ticket.pieces else None
            if output.finished:
                del self._running[output.request_id]
                assert output.result is not None, "a finished output carries its result"
                ttft = None if ticket.first_token is None else ticket.first_token - ticket.arrived
                self.metrics.observe_finished(output.result, ttft, now - ticket.arrived)
                self._release()
            self._send(ticket, Output(output, pieces))

    def _fail(self, ticket: Ticket, error: APIError) -> None:
        if error.status >= 500:
            self.metrics.failed.inc()
        self._release()
        self._send(ticket, Failed(error))

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _send(self, ticket: Ticket, event: Event) -> None:
        try:
            ticket.sink(event)
        except Exception:  # the handler's event loop is gone: nobody is listening any more
            logger.debug("request %s: event dropped", ticket.request_id, exc_info=True)
            if not isinstance(event, Failed) and ticket.request_id in self._running:
                self.engine.cancel(ticket.request_id)
