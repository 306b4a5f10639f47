"""Running an app with uvicorn: in the foreground (``ppd serve``) or on a background thread bound to a
free loopback port (tests, the load benchmark)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
from types import TracebackType

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C stops the scheduler through the app's shutdown)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` serves ``app`` on ``server.url`` until the block ends.

    Entering waits until ``GET ready_path`` answers 200 (the app's health check passes once the
    engine is warmed up), so that the first timed request does not include the warm-up.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        ready_path: str | None = "/health",
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))  # the kernel picks a free port, and it stays ours: no race
        self.host, self.port = self.sock.getsockname()
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.ready_path = ready_path
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not (self.server.started and self._ready()):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if self.ready_path is None:
            return True
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # connection refused, or HTTPError (an OSError) for 503 "starting"
            return False

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
