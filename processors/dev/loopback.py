"""An ASGI app served on 127.0.0.1 in a background thread: the real HTTP server that tests and
the demo put where a downstream system or a model provider would be."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

HOST = "127.0.0.1"  # loopback only: a test double and demo server, never a public endpoint


class LoopbackServer:
    def __init__(self, app, name: str, port: int = 0, lifespan: str = "off"):
        """``lifespan="on"`` for an app that starts its own tasks on startup (an MCP server's sessions)."""
        self.name = name
        self.port = port
        self.url: str | None = None
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan,
                                                     timeout_graceful_shutdown=10))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> str:
        """Serve in a background thread; returns the base URL once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        sock = socket.create_server((HOST, self.port))  # bound here, so port 0 is known before serving
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name=self.name,
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} failed to start")
            time.sleep(0.01)
        self.url = f"http://{HOST}:{sock.getsockname()[1]}"
        return self.url

    def stop(self) -> None:
        """Stop after in-flight requests are answered, so their effects are visible once this returns."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._thread = None

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C interrupts it with KeyboardInterrupt."""
        if self._thread is not None:
            self._thread.join()


class McpServerThread:
    """An MCP server's streamable HTTP app on 127.0.0.1, in a background thread; ``url`` ends in /mcp."""

    def __init__(self, app, name: str, port: int = 0):
        self._http = LoopbackServer(app, name, port, lifespan="on")
        self.url: str | None = None

    def start(self) -> str:
        self.url = f"{self._http.start()}/mcp"
        return self.url

    def stop(self) -> None:
        self._http.stop()

    def wait(self) -> None:
        self._http.wait()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
