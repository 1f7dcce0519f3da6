"""A real webhook receiver: what a downstream system looks like to handoff's webhook action.

Tests and the demo run it on loopback to check delivery end to end — signatures, retries, and the
Idempotency-Key contract that turns at-least-once delivery into exactly-once effect. Failures and
slowness can be scripted, so retry paths are exercised against real HTTP rather than mocks.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from processors.actions.webhook import verify
from processors.dev.loopback import LoopbackServer


class Arrival(BaseModel):
    """One request as the receiver saw it; `at` is time.monotonic() when it arrived."""

    key: str | None
    at: float
    path: str
    status: int


OnApply = Callable[[str, str, Any], None]  # (idempotency key, path, JSON body) of each applied request


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def _pop(script: dict[str | None, deque[Any]], key: str | None) -> Any | None:
    """The next scripted behaviour for this key, else for any key, else None."""
    for scope in (key, None):
        if script.get(scope):
            return script[scope].popleft()
    return None


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1 in a background thread; all state is read and scripted thread-safely.

    Any POST path is accepted. Check order: signature (401), scripted failure, Idempotency-Key
    (400 if missing; a repeat gets the stored response, counted in `duplicates`), JSON body (400).
    """

    def __init__(self, secret: str | None = None, port: int = 0, *, delay: float = 0.0,
                 retry_after: int | None = None, on_apply: OnApply | None = None) -> None:
        self.secret = secret
        self.delay = delay  # seconds before answering every request, to provoke client timeouts
        self.retry_after = retry_after  # sent as Retry-After with scripted 429 and 503 answers
        self.url: str | None = None
        self._on_apply = on_apply
        self._lock = threading.Lock()
        self._applied: dict[str, Any] = {}
        self._responses: dict[str, bytes] = {}
        self._arrivals: list[Arrival] = []
        self._duplicates = 0
        self._failures: dict[str | None, deque[int]] = {}
        self._delays: dict[str | None, deque[float]] = {}
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        self._http = LoopbackServer(app, "webhook-receiver", port)

    def fail_next(self, key: str | None, *statuses: int) -> None:
        """The next requests for `key` (None: any key) answer these statuses, in order, without applying."""
        with self._lock:
            self._failures.setdefault(key, deque()).extend(statuses)

    def delay_next(self, key: str | None, *seconds: float) -> None:
        """The next requests for `key` (None: any key) wait these seconds instead of `delay`: one slow answer."""
        with self._lock:
            self._delays.setdefault(key, deque()).extend(seconds)

    @property
    def applied(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._applied)

    @property
    def arrivals(self) -> list[Arrival]:
        """Every request answered so far, in the order answered."""
        with self._lock:
            return list(self._arrivals)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return self._duplicates

    def start(self) -> str:
        """Serve in a background thread; returns the base URL once it accepts connections."""
        self.url = self._http.start()
        return self.url

    def stop(self) -> None:
        """Stop after in-flight requests are answered, so their effects are visible once this returns."""
        self._http.stop()

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C interrupts it with KeyboardInterrupt."""
        self._http.wait()

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        key = request.headers.get("idempotency-key")
        body = await request.body()
        with self._lock:
            delay = _pop(self._delays, key)
        await asyncio.sleep(self.delay if delay is None else delay)
        signed = self.secret is None or verify(self.secret, request.headers.get("x-handoff-timestamp", ""), body,
                                               request.headers.get("x-handoff-signature", ""))
        with self._lock:
            response, applied = self._answer(signed, key, body)
            self._arrivals.append(Arrival(key=key, at=arrived, path=request.url.path, status=response.status_code))
            payload = self._applied.get(key) if applied and key is not None else None
        if applied and key is not None and self._on_apply is not None:
            self._on_apply(key, request.url.path, payload)  # outside the lock: it may read this receiver
        return response

    def _answer(self, signed: bool, key: str | None, body: bytes) -> tuple[Response, bool]:
        """The response, and whether this request was applied. Called with the lock held."""
        if not signed:
            return _json(401, {"error": "bad signature"}), False
        status = _pop(self._failures, key)
        if status is not None:
            throttled = self.retry_after is not None and status in (429, 503)
            headers = {"Retry-After": f"{self.retry_after}"} if throttled else None
            return _json(status, {"error": "scripted failure"}, headers), False
        if key is None:
            return _json(400, {"error": "missing Idempotency-Key"}), False
        if key in self._responses:
            self._duplicates += 1
            return Response(self._responses[key], 200, {"Idempotent-Replayed": "true"}, "application/json"), False
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(400, {"error": "body is not JSON"}), False
        self._applied[key] = payload
        self._responses[key] = orjson.dumps({"applied": key, "sequence": len(self._applied)})
        return Response(self._responses[key], 200, media_type="application/json"), True


def _print_applied(key: str, path: str, body: Any) -> None:
    print(orjson.dumps({"idempotency_key": key, "path": path, "body": body}).decode(), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the receiver in the foreground for the demo, one JSON line per applied request."""
    parser = argparse.ArgumentParser(prog="python -m processors.dev.receiver", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--secret", help="HMAC key; requests with a bad signature get 401")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering each request")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM as on Ctrl-C
    receiver = WebhookReceiver(args.secret, args.port, delay=args.delay, on_apply=_print_applied)
    print(f"webhook receiver listening on {receiver.start()}", flush=True)
    try:
        receiver.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
