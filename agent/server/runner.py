"""Run an ASGI app with uvicorn: in the foreground (the CLI) or in a background thread (demos
and tests).

    from agent.server import ServerThread, create_app, load_queues_file

    settings = load_queues_file("queues.yml", redis_url="redis://127.0.0.1:6379/0")
    with ServerThread(create_app(settings)) as srv:     # a free loopback port
        print(srv.url)                                  # http://127.0.0.1:40123
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "bind_socket"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), handed to uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class ServerThread:
    """uvicorn serving ``app`` in a daemon thread; ``start()`` returns once it accepts requests."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning", access_log: bool = False) -> None:
        self.app = app
        self.host = host
        self.socket = bind_socket(host, port)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.url} did not start"
                                   + (f": {self.error}" if self.error else ""))
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
